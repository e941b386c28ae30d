"""The built-in methods: one file per method, each registered behind the same fit/predict
interface (benchmark.api). The harness loads this package through the `benchmark.methods`
entry point, as it loads any outside package's methods."""

from . import (cafe, clip_adapter, clip_ft, clip_probe, clip_zeroshot, eac, erm, ofer, rul, scn,  # noqa: F401
               cafe_classmask, coop, lp_ft, tip_adapter, wise_ft)  # (registration)
