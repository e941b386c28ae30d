"""Shared test set-up: every test gets its own cache and results folders."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def isolated_outputs(tmp_path_factory, monkeypatch):
    out = tmp_path_factory.mktemp("results")
    monkeypatch.setenv("BENCHMARK_RESULTS", str(out))
    monkeypatch.setenv("BENCHMARK_CACHE", str(out / "cache"))
    monkeypatch.delenv("FER_DATA_ROOT", raising=False)
    return out
