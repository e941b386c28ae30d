"""Stores written by earlier versions read the same: a small synth5 grid (cafe and clip_ft, three
domains, two seeds, two epochs; `tiny.toml`) was trained and recorded on 2026-11-30, before
benchmark/ was regrouped into its parts, once into a JSON-lines store and once into MLflow
(SQLite, gzipped; artifacts left out: no table reads them). Every table and comparison built from
them today must equal, byte for byte, what was recorded (`expected/`, first made with
`benchmark table` / `benchmark compare` of that version). A deliberate change of a table's
format records them again (`python -m tests.test_store_compat --record`) in the same commit and
says why: the numbers in them never change. (Recorded again when the unit of `compare` became
the trained model and tables marked ties: the same numbers, a new layout.)
"""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import pytest

from benchmark.cli import main

DATA = Path(__file__).parent / "data" / "store_v1"
OUTPUTS = {  # expected file suffix -> arguments after the store
    "table1.md": ["table"],
    "table1.tex": ["table", "--format", "latex"],
    "table1.csv": ["table", "--format", "csv"],
    "table1_val_f1.md": ["table", "--selection", "source_val", "--metric", "macro_f1"],
    "perclass.md": ["table", "--table", "perclass"],
    "compare.md": ["compare", "cafe", "clip_ft"],
}


@pytest.fixture(scope="module")
def stores(tmp_path_factory) -> dict[str, str]:
    """The recorded stores, copied (reading may add a lock file or migrate a schema in place)."""
    work = tmp_path_factory.mktemp("store_v1")
    shutil.copytree(DATA / "runs", work / "runs")
    with gzip.open(DATA / "mlflow.db.gz") as src, open(work / "mlflow.db", "wb") as dst:
        shutil.copyfileobj(src, dst)
    return {"jsonl": f"jsonl:{work}/runs", "sqlite": f"sqlite:///{work}/mlflow.db"}


@pytest.mark.parametrize("store", ["jsonl", "sqlite"])
@pytest.mark.parametrize("output", sorted(OUTPUTS))
def test_a_store_written_before_the_regrouping_gives_the_same_tables(stores, store, output, tmp_path):
    out = tmp_path / output
    command, *rest = OUTPUTS[output]
    assert main([command, *rest, "--protocol", "tiny", "--tracking-uri", stores[store], "--out", str(out)]) == 0
    expected = (DATA / "expected" / f"{store}.{output}").read_bytes()
    assert out.read_bytes() == expected



if __name__ == "__main__":  # after a deliberate change of a table's format: record it again
    import sys
    import tempfile

    if "--record" in sys.argv:
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            shutil.copytree(DATA / "runs", work / "runs")
            with gzip.open(DATA / "mlflow.db.gz") as src, open(work / "mlflow.db", "wb") as dst:
                shutil.copyfileobj(src, dst)
            uris = {"jsonl": f"jsonl:{work}/runs", "sqlite": f"sqlite:///{work}/mlflow.db"}
            for store, uri in uris.items():
                for output, (command, *rest) in OUTPUTS.items():
                    out = DATA / "expected" / f"{store}.{output}"
                    assert main([command, *rest, "--protocol", "tiny", "--tracking-uri", uri, "--out", str(work / output)]) == 0
                    out.write_bytes((work / output).read_bytes())
