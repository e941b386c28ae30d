"""Model selection read from per-epoch histories: each rule picks the epoch it should, and every
output names the rule it was built with."""

from __future__ import annotations

import pytest

from benchmark.cli import main
from benchmark.report.selection import LABELS, select
from benchmark.store import open_store, schema

from .test_tables import FakeJob

# acc per epoch (1, 2, 3) of one job trained on "a": on its source's validation split, its own
# test set "a" and the other target "b". Each rule must land on a different epoch.
HISTORY = {schema.SOURCE_VAL: [0.50, 0.70, 0.60], "a": [0.80, 0.75, 0.90], "b": [0.30, 0.20, 0.40]}
HISTORY_B_ORACLE = {"b": [0.30, 0.45, 0.40]}  # a second job whose best "b" epoch is 2


def log_history(store, method: str, history: dict[str, list[float]], seed: int = 0) -> None:
    job = FakeJob("sel", method, "a", seed, "resnet18:none")
    log = store.open_job(store.experiment("sel"), "g", job)
    log.params({schema.BACKBONE: "resnet18:none", schema.data_param("a", "test"): "x",
                schema.data_param("b", "test"): "y"})
    for epoch in range(3):
        values = {}
        for target, accs in history.items():
            prefix = schema.SOURCE_VAL if target == schema.SOURCE_VAL else schema.target_prefix(target)
            values[f"{prefix}/acc"] = accs[epoch]
            values[f"{prefix}/macro_f1"] = accs[epoch] / 2
        log.metrics(values, step=epoch + 1)
    log.finish("FINISHED")


@pytest.fixture
def store(tmp_path):
    store = open_store(f"jsonl:{tmp_path / 'runs'}")
    log_history(store, "m", HISTORY)
    log_history(store, "n", {"a": HISTORY["a"], **HISTORY_B_ORACLE})  # no validation split
    return store


def picked(store, rule: str, method: str = "m", metric: str = "acc") -> dict[str, tuple[int, float]]:
    frame = select(store.history("sel", ["acc", "macro_f1"]), rule)
    rows = frame[(frame["method"] == method) & (frame["metric"] == metric)]
    return {r.target: (r.epoch, r.value) for r in rows.itertuples()}


def test_each_rule_picks_its_epoch(store):
    assert picked(store, "last") == {"a": (3, 0.90), "b": (3, 0.40)}
    assert picked(store, "source_val") == {"a": (2, 0.75), "b": (2, 0.20)}  # best validation: epoch 2
    assert picked(store, "source_test") == {"a": (3, 0.90), "b": (3, 0.40)}
    assert picked(store, "oracle", "n") == {"a": (3, 0.90), "b": (2, 0.45)}  # per target
    assert picked(store, "source_val", metric="macro_f1") == {"a": (2, 0.375), "b": (2, 0.10)}  # chosen by acc


def test_last_from_history_equals_the_final_values(store):
    frame = select(store.history("sel", ["acc", "macro_f1"]), "last").drop(columns=["epoch", "job_hash"])
    final = store.results("sel")
    assert frame.reset_index(drop=True).equals(final.reset_index(drop=True))


def test_a_job_the_rule_cannot_read_is_named_not_imputed(store):
    frame = select(store.history("sel", ["acc"]), "source_val")
    assert set(frame["method"]) == {"m"}
    (warning,) = frame.attrs["warnings"]
    assert "1 job(s) left out" in warning and "n on a (seed 0)" in warning and "recipe.val_fraction" in warning


@pytest.mark.parametrize("rule", ["source_test", "oracle", "source_val", "last"])
@pytest.mark.parametrize("fmt", ["md", "latex", "csv"])
def test_every_output_names_its_rule(store, capsys, rule, fmt):
    assert main(["table", "--tracking-uri", store.uri, "--protocol", "sel", "--selection", rule,
                 "--format", fmt]) == 0
    out = capsys.readouterr().out
    label = LABELS[rule]
    assert (label if fmt != "csv" else rule) in out
    if fmt == "csv":
        assert out.splitlines()[0].startswith("table,selection,") and f",{rule}," in out.splitlines()[1]
