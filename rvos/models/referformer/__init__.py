"""The ReferFormer family at architecture parity with the official inference code
(Wu et al., CVPR 2022; wjn922/ReferFormer), so that released checkpoints of ReferFormer and
of the methods built on it run here after ``rvos convert``."""
