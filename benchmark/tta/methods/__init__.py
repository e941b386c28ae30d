"""The built-in test-time adaptation methods, one file each; importing this package registers
them (benchmark.tta.base.TTA_METHODS)."""

from . import eata, lame, none, norm, sar, shot_im, t3a, tent  # noqa: F401
