"""Data: official on-disk formats, the synthetic benchmark, video I/O, clip transforms."""
