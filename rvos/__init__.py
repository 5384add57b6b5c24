"""rvos: a toolkit for Referring Video Object Segmentation (RVOS).

Given a video and a sentence ("the red car on the left"), segment the referred object in
every frame. See README.md for the two set-up commands and ../shared/DESIGN.md for the
architecture.
"""

__version__ = "0.1.0"
