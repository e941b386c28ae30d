"""`benchmark perf`: the scale check, and bad options named before any timing. (`perf --quick`
with every field is checked by the device script's dry run, tests/test_gpu_check.py, which runs it.)"""

from __future__ import annotations

import json

import pytest

from benchmark.cli import main


@pytest.mark.slow
def test_perf_scale_trains_one_epoch_and_reports_memory(tmp_path, capsys):
    out = tmp_path / "scale.json"
    assert main(["perf", "--quick", "--scale-images", "600", "--size", "24", "--json", str(out)]) == 0
    assert "peak resident memory" in capsys.readouterr().out
    scale = json.loads(out.read_text())["scale"]
    assert scale["images"] == 600 and scale["size"] == 24
    assert scale["cache_mb"] == 600 * 24 * 24 * 3 / 2**20
    assert scale["epoch_s"] > 0 and scale["peak_rss_mb"] > 0 and scale["peak_rss_mb_build"] > 0


def test_bad_pack_options_are_named_before_any_timing(capsys):
    assert main(["perf", "--quick", "--pack", "four"]) == 2
    assert "--pack 'four'" in capsys.readouterr().err
    assert main(["perf", "--quick", "--pack", "2", "--pack-variants", "fastest"]) == 2
    assert "--pack-variants: unknown fastest (known: sync_every_step" in capsys.readouterr().err
    assert main(["perf", "--quick", "--loop-variants", "default,fastest"]) == 2
    assert "--loop-variants: unknown fastest (known: sync_every_step" in capsys.readouterr().err
