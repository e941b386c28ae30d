"""The layers of benchmark/ (pyproject.toml, [tool.importlinter]) hold, and the contracts catch
what they are for: an upward import, an import circle, a method reaching past benchmark.api."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LINT = [sys.executable, "-c", "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())"]


def lint(root: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run([*LINT, "--no-cache"], cwd=root, env=env, capture_output=True, text=True, timeout=300)


def test_the_import_contracts_are_kept():
    proc = lint(ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 broken" in proc.stdout


def test_each_contract_fails_on_the_import_it_forbids(tmp_path):
    for folder in ("benchmark", "methods", "protocols"):
        shutil.copytree(ROOT / folder, tmp_path / folder, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    with open(tmp_path / "benchmark" / "core" / "labels.py", "a") as fh:  # core reaching up to the report
        fh.write("\nfrom ..report import figures  # noqa\n")
    with open(tmp_path / "benchmark" / "core" / "registry.py", "a") as fh:  # registry <-> errors: a circle
        fh.write("\nfrom . import errors as _errors  # noqa\n")
    with open(tmp_path / "benchmark" / "core" / "errors.py", "a") as fh:
        fh.write("\nfrom . import registry as _registry  # noqa\n")
    with open(tmp_path / "benchmark" / "training" / "extensions" / "mixstyle.py", "a") as fh:  # one extension on another
        fh.write("\nfrom . import sam as _sam  # noqa\n")
    with open(tmp_path / "methods" / "erm.py", "a") as fh:  # a method past benchmark.api
        fh.write("\nfrom benchmark.training.trainer import fit as _fit  # noqa\n")
    proc = lint(tmp_path)
    out = proc.stdout
    assert proc.returncode != 0
    assert "benchmark's parts import downwards only BROKEN" in out and "benchmark.core.labels -> benchmark.report" in out
    assert "no import circle between modules or packages, at any depth BROKEN" in out
    assert "methods see benchmark only through benchmark.api BROKEN" in out and "methods.erm -> benchmark.training" in out
    assert "inside the runner: the grid drives executors, executors run one job KEPT" in out
    assert "training extensions never import each other" in out and "extensions.mixstyle -> " in out
