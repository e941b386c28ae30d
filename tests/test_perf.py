"""`benchmark perf --quick` runs in seconds and reports every field."""

from __future__ import annotations

import json

from benchmark.cli import main


def test_perf_quick_prints_and_writes_every_field(tmp_path, capsys):
    out = tmp_path / "perf.json"
    assert main(["perf", "--quick", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    for field in ("img/s", "data ms", "encoder ms", "backbone f+b ms", "optim ms", "data wait",
                  "harness/per-sample", "GFLOP per training image", "efficiency", "evaluation of 5 test sets",
                  "peak resident memory"):
        assert field in text
    report = json.loads(out.read_text())
    assert set(report["methods"]) == {"erm", "cafe", "clip_ft"}
    for m in report["methods"].values():
        assert m["train_flops_per_image"] > 0 and 0 < m["efficiency"] < 1.5
        for path in ("harness", "per_sample"):
            assert m[path]["images_per_s"] > 0 and 0 <= m[path]["data_wait_share"] <= 1
    assert report["methods"]["erm"]["harness"]["encoder_s"] == 0  # erm runs no encoder
    assert report["methods"]["cafe"]["harness"]["encoder_s"] > 0
    assert report["eval"]["cold_s"] > 0 and report["eval"]["warm_s"] > 0 and report["peak_rss_mb"] > 0
