"""The tidy results frame tables are built from: one FINISHED run per job, its metrics per
target, read back from a store; and the labels rows carry ("erm+swad", a backbone's name)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import pandas as pd

from . import schema
from .records import RunRecord

# `sweep`: the job's swept values as "name=value, ..." ("" outside a sweep).
# collapsed: the run's model predicts (almost) one class on its source's test set (schema.COLLAPSED)
RESULT_COLUMNS = ["method", "backbone", "source", "seed", "target", "metric", "value", "env", "sweep", "collapsed"]
def target_name(names: dict[str, str], safe: str) -> str:
    """A target's name from its safe name in metric keys; a slice's (`synth5.wild:occluded`) from
    its dataset's (`synth5/wild:occluded`)."""
    if safe in names:
        return names[safe]
    base, sep, slice_name = safe.partition(":")
    return f"{names.get(base, base)}:{slice_name}" if sep else safe


HISTORY_COLUMNS = ["job_hash", "method", "backbone", "source", "seed", "target", "metric", "epoch", "value", "env",
                   "sweep", "collapsed"]


class ResultsFrame:
    """Results and histories of a protocol's finished runs, as pandas frames."""

    def latest_protocol(self) -> str:
        """Name of the experiment whose newest FINISHED job run is the most recent."""
        from ..core.errors import BenchmarkError

        best, best_time = None, -1
        for name in self.experiment_names():
            ends = [r.end_time or 0 for r in self.runs(self.experiment(name), jobs_only=True)
                    if r.status == "FINISHED"]
            if ends and max(ends) > best_time:
                best, best_time = name, max(ends)
        if best is None:
            raise BenchmarkError(f"no FINISHED runs in {self.uri}; run `benchmark run` first")
        return best

    def logged_protocol(self, protocol: str) -> dict[str, Any] | None:
        """The resolved protocol (its `protocol.json`) the newest grid run of the experiment
        logged; None when there is none (a protocol file not in protocols/ is read back this way)."""
        import json
        import tempfile

        experiment_id = self.experiment(protocol, create=False)
        grids = [] if experiment_id is None else self.runs(experiment_id, kind="grid")
        for grid in sorted(grids, key=lambda r: r.start_time, reverse=True):
            with tempfile.TemporaryDirectory() as tmp:
                try:
                    return json.loads(self.download(grid.run_id, "protocol.json", Path(tmp)).read_text())
                except Exception:  # noqa: BLE001 - best effort: an older grid run may lack the file
                    continue
        return None

    def _counted_runs(self, protocol: str) -> tuple[list[RunRecord], list[str]]:
        """The FINISHED job runs of a protocol, one per job hash (the earliest; others, left by
        concurrent runs of older versions, are ignored with a warning)."""
        experiment = self.experiment(protocol, create=False)
        runs = [] if experiment is None else [r for r in self.runs(experiment, jobs_only=True)
                                              if r.status == "FINISHED"]
        runs.sort(key=lambda r: (r.start_time, r.run_id))
        seen: set[str] = set()
        counted, extra = [], []
        for run in runs:
            (extra if run.tags[schema.JOB_HASH] in seen else counted).append(run)
            seen.add(run.tags[schema.JOB_HASH])
        warnings = []
        if extra:
            hashes = sorted({r.tags[schema.JOB_HASH] for r in extra})
            warnings.append(f"{len(extra)} extra FINISHED run(s) of {len(hashes)} job(s) ignored "
                            f"(one run counts per job hash; hashes {', '.join(hashes)})")
        counted, other_data = _latest_per_data(counted)
        return counted, warnings + other_data

    @staticmethod
    def _job_columns(run: RunRecord, known: dict[str, str]) -> tuple[list, dict[str, str]]:
        """[method, backbone, source, seed] of a job run, and safe name -> dataset name for its
        metric keys (from `known` and the run's own data.<dataset>:<split> params)."""
        from ..core.environment import SIGNATURE_KEYS, signature

        names = {**{schema.safe_name(d): d for d in schema.datasets_read(run.params)}, **known}
        if schema.TTA_TARGET in run.tags:  # an evaluation's target, a slice's name included
            names[schema.safe_name(run.tags[schema.TTA_TARGET])] = run.tags[schema.TTA_TARGET]
        env = signature({k: run.params.get(k) for k in SIGNATURE_KEYS})
        swept = {k[len(schema.SWEEP_PREFIX):]: v for k, v in run.tags.items() if k.startswith(schema.SWEEP_PREFIX)}
        return [method_label(run), run.params.get(schema.BACKBONE, ""), run.tags[schema.SOURCE],
                int(run.tags[schema.SEED])], {"names": names, "env": env, "sweep": schema.sweep_label(swept),
                                               "collapsed": bool(run.tags.get(schema.COLLAPSED))}

    def results(self, protocol: str, datasets: list[str] | None = None) -> pd.DataFrame:
        """The tidy frame tables are built from: one row per (FINISHED job run, target, metric),
        the final values, with columns RESULT_COLUMNS; `env` is the run's environment signature.

        One FINISHED run counts per job hash; what the reader should know (ignored duplicates)
        is in `frame.attrs["warnings"]`. Metric keys name targets by their safe names; the
        dataset names come back from `datasets` and from each run's `data.*` params.
        """
        counted, warnings = self._counted_runs(protocol)
        return self._tidy(counted, datasets, warnings)

    def _tidy(self, runs: list[RunRecord], datasets: list[str] | None, warnings: list[str],
              suffix: Callable[[RunRecord], str] = lambda run: "") -> pd.DataFrame:
        """The results frame of these runs' test metrics; `suffix` extends a run's method label."""
        known = {schema.safe_name(d): d for d in (datasets or [])}
        rows = []
        for run in runs:
            job, extra = self._job_columns(run, known)
            job[0] += suffix(run)
            for key, value in run.metrics.items():
                parsed = schema.parse_test_metric(key)
                if parsed is not None:
                    rows.append([*job, target_name(extra["names"], parsed[0]), parsed[1], float(value), extra["env"],
                                 extra["sweep"], extra["collapsed"]])
        frame = pd.DataFrame(rows, columns=RESULT_COLUMNS)
        frame["backbone"] = backbone_labels(frame["backbone"])
        # A fixed row order makes every sum (and so every rounded cell) the same from run to run.
        frame = frame.sort_values(RESULT_COLUMNS[:6], kind="stable").reset_index(drop=True)
        frame.attrs["warnings"] = warnings
        return frame

    def tta_results(self, protocol: str, datasets: list[str] | None = None) -> pd.DataFrame:
        """The results frame of the protocol's FINISHED test-time adaptation evaluations
        (`benchmark adapt`): a row per (evaluation, metric), the method named as the trained
        method and its adaptation ("cafe+tent"), one run counted per evaluation hash."""
        experiment = self.experiment(protocol, create=False)
        runs = [] if experiment is None else [r for r in self.runs(experiment, kind=schema.TTA_KIND)
                                              if r.status == "FINISHED"]
        runs.sort(key=lambda r: (r.start_time, r.run_id))
        seen, counted = set(), []
        for run in runs:
            if run.tags[schema.TTA_HASH] not in seen:
                seen.add(run.tags[schema.TTA_HASH])
                counted.append(run)
        return self._tidy(counted, datasets, [], suffix=lambda run: f"+{run.tags[schema.TTA]}")

    def tta_costs(self, protocol: str) -> pd.DataFrame:
        """A row per FINISHED, applicable TTA evaluation of the protocol: its TTA label, seconds
        per test image, and network forward and backward passes and batches of its stream."""
        experiment = self.experiment(protocol, create=False)
        runs = [] if experiment is None else self.runs(experiment, kind=schema.TTA_KIND)
        rows = [[r.tags[schema.TTA], r.metrics["tta/seconds_per_image"], r.metrics.get("tta/forwards", 0.0),
                 r.metrics.get("tta/backwards", 0.0), r.metrics["tta/batches"]]
                for r in runs if r.status == "FINISHED" and "tta/seconds_per_image" in r.metrics]
        return pd.DataFrame(rows, columns=["tta", "seconds_per_image", "forwards", "backwards", "batches"])

    def histories(self, run_ids: list[str], wanted: Callable[[str], bool],
                  keys: dict[str, list[str]]) -> dict[str, dict[str, list[tuple[int, float]]]]:
        """run id -> metric key -> its (step, value) history, for the `wanted` keys among `keys`
        (each run's metric keys). Backends may do this in one pass."""
        return {run_id: {key: self.metric_history(run_id, key) for key in keys[run_id] if wanted(key)}
                for run_id in run_ids}

    def history(self, protocol: str, metrics: list[str], datasets: list[str] | None = None) -> pd.DataFrame:
        """Per-epoch values of the job runs counted by `results`: columns HISTORY_COLUMNS, one row
        per (run, target, metric, epoch) for `metrics` on every target and on the source's
        validation split (target "source_val"), whatever each run evaluated."""
        counted, warnings = self._counted_runs(protocol)
        known = {schema.safe_name(d): d for d in (datasets or [])}

        def wanted(key: str) -> bool:
            parsed = schema.parse_test_metric(key)
            if parsed is not None:
                return parsed[1] in metrics
            return key.startswith(schema.SOURCE_VAL + "/") and key[len(schema.SOURCE_VAL) + 1:] in metrics

        histories = self.histories([r.run_id for r in counted], wanted, {r.run_id: list(r.metrics) for r in counted})
        rows = []
        for run in counted:
            job, extra = self._job_columns(run, known)
            for key, points in histories[run.run_id].items():
                parsed = schema.parse_test_metric(key)
                target, metric = ((target_name(extra["names"], parsed[0]), parsed[1]) if parsed is not None
                                  else (schema.SOURCE_VAL, key[len(schema.SOURCE_VAL) + 1:]))
                for step, value in points:
                    rows.append([run.tags[schema.JOB_HASH], *job, target, metric, int(step), float(value), extra["env"],
                                 extra["sweep"], extra["collapsed"]])
        frame = pd.DataFrame(rows, columns=HISTORY_COLUMNS)
        frame["backbone"] = backbone_labels(frame["backbone"])
        frame = (frame
                 .sort_values(["method", "backbone", "source", "seed", "target", "metric", "epoch"], kind="stable")
                 .drop_duplicates(["job_hash", "target", "metric", "epoch"], keep="last").reset_index(drop=True))
        frame.attrs["warnings"] = warnings
        return frame


def method_label(run: RunRecord) -> str:
    """The method as tables name it: with the domain-generalization recipes its job wore
    ("erm+swad", "cafe+sam"), so a method with and without one are two rows, compared as two methods."""
    label = run.tags.get(schema.DG_RECIPES)
    if label is None:  # logged before the tag
        label = schema.legacy_dg_label({k.removeprefix("recipe."): v for k, v in run.params.items()
                                        if k.startswith("recipe.")})
    return f"{run.tags[schema.METHOD]}+{label}" if label else run.tags[schema.METHOD]


def backbone_labels(ids: pd.Series) -> pd.Series:
    """Each backbone id NAME:WEIGHTS as tables name it: its NAME ("resnet18", "timm:convnext_atto"),
    or the whole id where the frame holds one name with two weights (the pretraining axis:
    "mobilenet_v2:imagenet" beside "mobilenet_v2:none")."""
    names = ids.map(lambda i: i.rpartition(":")[0] or i)
    weights_per_name = ids.groupby(names).nunique()
    return ids.where(names.map(weights_per_name) > 1, names)


def _same_job_key(run: RunRecord) -> tuple:
    """What makes two runs the same job but for the data they read: method, backbone, source,
    seed, sweep point and every hyperparameter and recipe value."""
    settings = tuple(sorted((k, v) for k, v in run.params.items()
                            if k.startswith(("hp.", "recipe.")) or k == schema.BACKBONE))
    sweep = tuple(sorted((k, v) for k, v in run.tags.items() if k.startswith(schema.SWEEP_PREFIX)))
    return run.tags[schema.METHOD], run.tags[schema.SOURCE], run.tags[schema.SEED], sweep, settings


def _latest_per_data(runs: list[RunRecord]) -> tuple[list[RunRecord], list[str]]:
    """`runs` less the earlier runs of a job made again on other data (a dataset split whose
    fingerprint differs: synth5 drawn by another generator version or CPU, a dataset copy that
    changed), with a warning naming them. Such runs have different job hashes, so without this
    a table would count the same seed twice. `runs` is in start order; the latest counts."""
    by_job: dict[tuple, list[RunRecord]] = {}
    for run in runs:
        by_job.setdefault(_same_job_key(run), []).append(run)
    dropped: set[str] = set()
    described = []
    for group in by_job.values():
        data = [{k: v for k, v in r.params.items() if k.startswith(schema.DATA_PREFIX)} for r in group]
        differing = sorted({k for a in data for b in data for k in a.keys() & b.keys() if a[k] != b[k]})
        if not differing:
            continue
        dropped.update(r.run_id for r in group[:-1])
        latest = group[-1]
        split = differing[0][len(schema.DATA_PREFIX):]
        digests = " vs ".join(dict.fromkeys(d[differing[0]] for d in data if differing[0] in d))
        described.append(f"{latest.tags[schema.METHOD]} on {latest.tags[schema.SOURCE]} (seed "
                         f"{latest.tags[schema.SEED]}): {split} {digests}")
    if not dropped:
        return runs, []
    more = f" and {len(described) - 6} more" if len(described) > 6 else ""
    return [r for r in runs if r.run_id not in dropped], [
        f"{len(described)} job(s) were run on different data ({'; '.join(described[:6])}{more}); "
        f"only the latest run of each counts, {len(dropped)} earlier run(s) ignored. Compare the data "
        f"digests (MLflow's dataset inputs, `benchmark datasets check`) before trusting the table"]
