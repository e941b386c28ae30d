"""`benchmark perf --quick` runs in seconds and reports every field."""

from __future__ import annotations

import json

import pytest

from benchmark.cli import main


@pytest.mark.slow
def test_perf_quick_prints_and_writes_every_field(tmp_path, capsys):
    out = tmp_path / "perf.json"
    assert main(["perf", "--quick", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    for field in ("img/s", "data ms", "encoder ms", "backbone f+b ms", "optim ms", "data wait",
                  "vs per-sample", "GFLOP per training image", "efficiency", "evaluation of 5 test sets",
                  "clip_probe", "cold/rest", "peak resident memory", "bf16"):
        assert field in text
    report = json.loads(out.read_text())
    assert set(report["methods"]) == {"erm", "cafe", "clip_ft"}
    for m in report["methods"].values():
        assert m["train_flops_per_image"] > 0
        for path in ("harness_auto", "harness_bf16"):
            # Finite and positive only: on a loaded machine the tiny quick matmul can read low.
            assert 0 < m[path]["efficiency"] < float("inf") and m[path]["speedup_vs_per_sample"] > 0
        for path in ("per_sample", "harness_auto", "harness_bf16"):
            assert m[path]["images_per_s"] > 0 and 0 <= m[path]["data_wait_share"] <= 1
    assert report["methods"]["erm"]["harness_auto"]["encoder_s"] == 0  # erm runs no encoder
    assert report["methods"]["cafe"]["harness_auto"]["encoder_s"] > 0
    assert set(report["eval"]) == {"auto", "bf16"} and report["peak_rss_mb"] > 0
    for by_method in report["eval"].values():
        assert set(by_method) == {"cafe", "clip_probe"}
        for e in by_method.values():
            cold, warm = e["cold"], e["warm"]
            # Cold decodes the files and runs the encoder; warm reads both from the disk caches, so
            # a cache that missed would show as encoder time in the warm run.
            assert cold["decode_s"] > 0 and cold["encoder_s"] > 0 and warm["encoder_s"] == 0
            assert cold["rest_s"] > 0 and warm["rest_s"] > 0 and e["speedup"] > 0 and e["cold_over_rest"] > 0


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
