"""The documentation a newcomer reads: a short README, links that lead somewhere, and nothing
that points outside the repository."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def test_the_readme_is_short():
    assert (ROOT / "README.md").stat().st_size <= 12 * 1024


def test_every_relative_link_in_the_docs_leads_to_a_file():
    for document in DOCUMENTS:
        for target in re.findall(r"\]\(([\w./-]+)(?:#[\w-]*)?\)", document.read_text()):
            if "/" not in target and not target.endswith(".md"):
                continue  # code that looks like a link: x["a"](b.c)
            assert (document.parent / target).exists(), f"{document.relative_to(ROOT)}: broken link {target}"


def test_nothing_in_the_repository_cites_documents_outside_it():
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    pattern = re.compile(r"spec §|\.\./shared|design\.md")
    hits = [path for path in tracked if Path(ROOT, path).suffix in (".py", ".md", ".toml", ".sh")
            and path != "tests/test_docs.py" and pattern.search(Path(ROOT, path).read_text(errors="replace"))]
    assert hits == []


def test_listing_commands_need_no_torch():
    """`--help`, `methods`, `recipes`, `protocols` and `datasets list` start fast: they import neither torch
    nor MLflow."""
    import sys

    for command in ("['protocols']", "['datasets', 'list']", "['methods']", "['recipes']", "['run', '--help']"):
        code = (f"import sys, contextlib; from benchmark.cli import main\n"
                f"with contextlib.suppress(SystemExit): main({command})\n"
                "heavy = [m for m in ('torch', 'mlflow') if m in sys.modules]; assert not heavy, heavy")
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
