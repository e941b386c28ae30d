"""What a user installs: the wheel carries the protocols, and an outside package adds a method
through the `benchmark.methods` entry point (the worked example in examples/plugin)."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from .test_runner import write_protocol

ROOT = Path(__file__).resolve().parent.parent
PLUGIN = ROOT / "examples" / "plugin"


def benchmark_cli(args: list[str], cwd: Path, env: dict[str, str] | None = None,
                  python: str = sys.executable) -> subprocess.CompletedProcess:
    return subprocess.run([python, "-m", "benchmark", *args], cwd=cwd, capture_output=True, text=True, timeout=600,
                          env={**os.environ, **(env or {})})


@pytest.mark.slow
def test_an_outside_package_registers_a_method_that_runs_a_tiny_grid(tmp_path):
    env = {"PYTHONPATH": str(PLUGIN)}  # the package and its dist-info, as if installed
    listed = benchmark_cli(["methods"], tmp_path, env)
    assert listed.returncode == 0, listed.stderr
    assert "erm_smooth " in listed.stdout and "erm_smooth_strong" in listed.stdout
    protocol = write_protocol(tmp_path)
    store = f"jsonl:{tmp_path / 'runs'}"
    run = benchmark_cli(["run", "--protocol", str(protocol), "--methods", "erm_smooth,erm_smooth_strong",
                         "--sources", "synth5/film", "--tracking-uri", store], tmp_path, env)
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.count("[done]") == 2
    table = benchmark_cli(["table", "--protocol", "tiny", "--tracking-uri", store], tmp_path, env)
    assert table.returncode == 0, table.stderr
    rows = [line for line in table.stdout.splitlines() if line.startswith("| erm_smooth")]
    assert len(rows) == 2 and all("–" not in row for row in rows)  # every cell has a number
    bad = benchmark_cli(["run", "--protocol", str(protocol), "--methods", "erm_smooth", "--dry-run",
                         "--set", "hparams.erm_smooth.smoothing=1.5", "--tracking-uri", store], tmp_path, env)
    assert bad.returncode == 2 and "smoothing = 1.5: must be in [0, 1)" in bad.stderr


@pytest.mark.slow
def test_the_wheel_installs_and_runs_its_protocols_from_another_folder(tmp_path):
    wheels = tmp_path / "wheels"
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                            "-w", str(wheels), str(ROOT)], capture_output=True, text=True, timeout=600)
    assert built.returncode == 0, built.stderr
    (wheel,) = wheels.glob("fer_benchmark-*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = str(venv / "bin" / "python")
    # The dependencies (torch, MLflow, ...) come from this environment, read through a path line;
    # this project itself only from the wheel.
    site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    Path(site, "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    installed = subprocess.run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "-q",
                                str(wheel)], capture_output=True, text=True, timeout=600)
    assert installed.returncode == 0, installed.stderr
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    where = subprocess.run([python, "-c", "import benchmark, methods; print(benchmark.__file__, methods.__file__)"],
                           cwd=elsewhere, capture_output=True, text=True, check=True).stdout
    assert where.count(str(venv)) == 2, where  # the wheel's copy, not the checkout
    listed = subprocess.run([str(venv / "bin" / "benchmark"), "protocols"], cwd=elsewhere, capture_output=True,
                            text=True, timeout=600)
    assert listed.returncode == 0, listed.stderr
    for name in ("gfer5", "gfer5_ablation", "gfer5_backbones", "gfer5_clip", "synth5"):
        assert f"\n{name} " in listed.stdout
    dry = subprocess.run([str(venv / "bin" / "benchmark"), "run", "--protocol", "synth5", "--dry-run",
                          "--tracking-uri", f"jsonl:{tmp_path / 'runs'}"], cwd=elsewhere, capture_output=True,
                         text=True, timeout=600)
    assert dry.returncode == 0 and "30 jobs, 0 already FINISHED" in dry.stdout, dry.stdout + dry.stderr


def test_every_package_folder_is_in_the_wheel():
    """A subpackage missing from pyproject's list installs nothing and breaks `import benchmark`
    from the wheel (benchmark.training.recipes did, once)."""
    import tomllib

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    on_disk = {".".join(init.parent.relative_to(ROOT).parts) for init in (ROOT / "benchmark").rglob("__init__.py")}
    assert on_disk - listed == set()
