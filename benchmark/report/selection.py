"""Model selection: which epoch of each job a result is read at, chosen when reading.

Every job logs its evaluation of every target (and of its source's validation split) per epoch
(benchmark.training.evaluator). A rule picks, from that history, the epoch each number is read at:

- `last` (default): the final epoch;
- `source_val`: the best epoch by accuracy on the source's validation split (DomainBed's
  training-domain validation); a job whose source has no validation split has no such epoch;
- `source_test`: the best epoch by accuracy on the source's own test split, as the authors'
  released training script kept its checkpoint;
- `oracle`: for each target, the best epoch by accuracy on that target (an upper bound, never a
  result).

Ties go to the earliest epoch. Pure functions of the history frame (benchmark.store.HISTORY_COLUMNS).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..core.errors import BenchmarkError
from ..core.sources import seen_mask

if TYPE_CHECKING:
    import pandas as pd

RULES = ("last", "source_val", "source_test", "oracle")
# What every output says about the rule it was built with.
LABELS = {"last": "last epoch", "source_val": "selected on the source validation split",
          "source_test": "selected on the source test set", "oracle": "oracle (selected on the target)"}
SELECTED_BY = "acc"  # the metric the best epoch is chosen by


def check_rule(rule: str) -> str:
    if rule not in RULES:
        raise BenchmarkError(f"--selection {rule!r}: expected one of {', '.join(RULES)}")
    return rule


def _best_epochs(frame: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    """The earliest epoch of the highest value per group `by`."""
    ordered = frame.sort_values([*by, "value", "epoch"], ascending=[True] * len(by) + [False, True], kind="stable")
    return ordered.drop_duplicates(by, keep="first")[[*by, "epoch"]]


def select(history: pd.DataFrame, rule: str) -> pd.DataFrame:
    """The results frame (RESULT_COLUMNS plus `epoch` and `job_hash`) of every job at the epoch `rule` picks;
    `attrs["warnings"]` names the jobs the rule cannot read (and why)."""
    from ..store import RESULT_COLUMNS, schema

    check_rule(rule)
    tests = history[history["target"] != schema.SOURCE_VAL]
    warnings = list(history.attrs.get("warnings", []))
    if rule == "last":
        chosen = tests.groupby("job_hash", as_index=False)["epoch"].max()
    elif rule == "oracle":
        chosen = _best_epochs(tests[tests["metric"] == SELECTED_BY], ["job_hash", "target"])
    else:
        on = (history[(history["target"] == schema.SOURCE_VAL) & (history["metric"] == SELECTED_BY)]
              if rule == "source_val" else
              tests[seen_mask(tests) & (tests["metric"] == SELECTED_BY).to_numpy()])
        chosen = _best_epochs(on, ["job_hash"])
    missing = sorted(set(tests["job_hash"]) - set(chosen["job_hash"]))
    if missing:
        jobs = tests[tests["job_hash"].isin(missing)].drop_duplicates("job_hash")
        named = ", ".join(f"{r.method} on {r.source} (seed {r.seed})" for r in jobs.itertuples())
        why = {"source_val": "no validation split of the source was evaluated (set recipe.val_fraction for "
                             "sources without one)",
               "source_test": "the source's own test set was not evaluated"}.get(rule, "no history")
        warnings.append(f"{LABELS[rule]}: {len(missing)} job(s) left out, {why}: {named}")
    keys = ["job_hash", "target", "epoch"] if rule == "oracle" else ["job_hash", "epoch"]
    picked = tests.merge(chosen, on=keys, how="inner")
    frame = (picked[[*RESULT_COLUMNS, "epoch", "job_hash"]].sort_values(RESULT_COLUMNS[:6], kind="stable")
             .reset_index(drop=True))
    frame.attrs["warnings"] = warnings
    return frame
