"""`benchmark perf`: the scale check, and bad options named before any timing. (`perf --quick`
with every field is checked by the device script's dry run, tests/test_gpu_check.py, which runs it.)"""

from __future__ import annotations

import json

import pytest

from benchmark.cli import main


@pytest.mark.slow
def test_perf_scale_trains_one_epoch_and_reports_memory(tmp_path, capsys):
    out = tmp_path / "scale.json"
    assert main(["perf", "--quick", "--scale-images", "200", "--size", "24", "--json", str(out)]) == 0
    assert "peak resident memory" in capsys.readouterr().out
    scale = json.loads(out.read_text())["scale"]
    assert scale["images"] == 200 and scale["size"] == 24
    assert scale["cache_mb"] == 200 * 24 * 24 * 3 / 2**20
    assert scale["epoch_s"] > 0 and scale["peak_rss_mb"] > 0 and scale["peak_rss_mb_build"] > 0


def test_bad_pack_options_are_named_before_any_timing(capsys):
    assert main(["perf", "--quick", "--pack", "four"]) == 2
    assert "--pack 'four'" in capsys.readouterr().err
    assert main(["perf", "--quick", "--pack", "2", "--pack-variants", "fastest"]) == 2
    assert "--pack-variants: unknown fastest (known: sync_every_step" in capsys.readouterr().err
    assert main(["perf", "--quick", "--loop-variants", "default,fastest"]) == 2
    assert "--loop-variants: unknown fastest (known: sync_every_step" in capsys.readouterr().err


def test_a_long_measurement_says_each_stage_its_place_and_the_time_left():
    import io

    from benchmark.perf.throughput import Stages

    out = io.StringIO()
    stage = Stages(3, out)
    for name in ("decoding", "matmul", "loop"):
        stage(name)
    lines = out.getvalue().splitlines()
    assert [line.split("]")[0] for line in lines] == ["[perf 1/3", "[perf 2/3", "[perf 3/3"]
    assert "left" not in lines[0] and lines[1].endswith("s left)") and "loop (" in lines[2]
