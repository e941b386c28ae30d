"""The device script's CPU dry run: every stage runs at toy sizes and leaves its logs, JSON,
table and figure, and the bundle of them all."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_check_dry_run_runs_every_stage_and_writes_its_reports(tmp_path):
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BENCHMARK_", "MLFLOW_"))}
    bundle = tmp_path / "check.tgz"
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh"), "--dry-run", str(out)],
                          env={**env, "PYTHON": sys.executable, "BUNDLE": str(bundle)}, capture_output=True,
                          text=True, timeout=900)
    stages = [json.loads(line) for line in (out / "stages.jsonl").read_text().splitlines()]
    assert [s["stage"] for s in stages] == ["env", "tests", "grid", "lodo", "explain", "perf", "fuse", "fuse_grid",
                                            "vit"], \
        proc.stdout
    assert proc.returncode == 0 and all(s["rc"] == 0 for s in stages), proc.stdout + proc.stderr
    assert " passed" in (out / "tests.log").read_text()  # the CUDA suite ran (on the CPU)
    tests = [json.loads(line) for line in (out / "tests.jsonl").read_text().splitlines()]
    assert any(t["test"].startswith("train_predict[cafe-") for t in tests)
    perf = json.loads((out / "perf.json").read_text())
    assert perf["loop"]["pack"] and perf["loop"]["pack"][0]["images_per_s"] > 0
    assert perf["loop"]["variants"]["cafe"]["default"]["images_per_s"] > 0
    check_perf_report((out / "perf.log").read_text(), perf)
    grid = json.loads((out / "grid.json").read_text())
    assert grid["one_finished_run_per_job"] and grid["jobs"] == 2 and grid["processes"] == 2
    assert grid["runs_with_system_metrics"] >= 1  # sampled every 0.5 s; each job trains for seconds
    lodo = json.loads((out / "lodo.json").read_text())
    assert lodo["one_finished_run_per_job"] and lodo["jobs"] == 1
    table = [[c.strip() for c in line.strip("|").split("|")]
             for line in (out / "lodo_table.md").read_text().splitlines() if line.startswith("|")]
    held_out = table[0].index("synth5/lowres")  # the one fold run: trained on the other four
    cafe = next(row for row in table if row[0] == "cafe")
    assert 0 <= float(cafe[held_out].rstrip("!")) <= 100, table  # "!": a collapsed model (toy sizes)
    assert (out / "gradcam.png").stat().st_size > 0 and (out / "gradcam.pdf").stat().st_size > 0
    fuse = json.loads((out / "fuse.json").read_text())["loop"]
    assert [r["fuse"] for r in fuse["fuse"]] == [1, 2] and all(r["images_per_s"] > 0 for r in fuse["fuse"])
    assert fuse["pack"][0]["fuse"] == 2 and fuse["pack"][0]["images_per_s"] > 0
    for name in ("fused", "packed"):
        summary = json.loads((out / f"fuse_grid_{name}.json").read_text())
        assert summary["one_finished_run_per_job"] and summary["jobs"] == 2, name
        assert summary["grid_runs"][0]["seconds"] > 0
    vit = json.loads((out / "vit.json").read_text())["loop"]
    assert list(vit["variants"]["erm"]) == ["default"] and vit["variants"]["erm"]["default"]["images_per_s"] > 0
    with tarfile.open(bundle) as tar:  # packed after the last stage: holds every stage's files
        names = {Path(n).name for n in tar.getnames()}
    assert {"stages.jsonl", "perf.json", "lodo_table.md", "gradcam.png"} <= names


def check_perf_report(text: str, report: dict) -> None:
    """`benchmark perf --quick` (the dry run's perf stage) prints and writes every field."""
    for field in ("img/s", "data ms", "encoder ms", "backbone f+b ms", "optim ms", "data wait",
                  "vs per-sample", "GFLOP per training image", "efficiency", "evaluation of 5 test sets",
                  "clip_probe", "cold/rest", "peak resident memory", "bf16"):
        assert field in text
    import re

    stages = re.findall(r"^\[perf (\d+)/(\d+)\] .*s so far", text, flags=re.M)  # progress on stderr, as it goes
    assert stages and stages[-1][0] == stages[-1][1] and len(stages) == int(stages[0][1])
    assert "s left)" in text
    assert set(report["methods"]) == {"erm", "cafe"}  # one without an encoder, one with
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


def test_gpu_check_refuses_a_stage_it_does_not_have_before_running_any(tmp_path):
    """`--stages` picks stages (a device session splits the check over two calls); a misspelt
    name would silently skip a stage, so it is refused, named, before anything runs."""
    out = tmp_path / "out"
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh"), "--dry-run", "--stages", "tests,grdi",
                           str(out)], env={**os.environ, "PYTHON": sys.executable}, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 2 and "no stage 'grdi'" in proc.stderr and "perf_mps" in proc.stderr
    assert not (out / "stages.jsonl").exists()
