"""benchmark: a harness for generalizable facial expression recognition (the CAFE 5x5 grid)."""

__version__ = "0.1.0"
