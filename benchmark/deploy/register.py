"""Registering, per (method, source), the model a selection rule picks without looking at any
unseen target, and LoggedModels for stores written before jobs made them.

A model holds its job's final weights, so a rule here chooses between models (seeds, sweep points,
backbones of one method and source), never between epochs: it reads one linked metric of each,
measured on the source only.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..core.errors import BenchmarkError
from ..core.sources import parts as source_parts
from ..store import ModelRecord, ResultStore, schema

# rule -> what it reads, in words; every one reads the source's own data only
RULES = {
    "source_val": "accuracy on the source's validation split (held out of training)",
    "source_test": "accuracy on the source's own test split (in-domain; an upper bound on what source_val finds)",
}
DEFAULT_ALIAS = "best"


def score_key(rule: str, source: str) -> list[str]:
    """The metric keys `rule` reads for a model trained on `source` (averaged when several)."""
    if rule == "source_val":
        return [f"{schema.SOURCE_VAL}/acc"]
    if rule == "source_test":
        return [schema.target_metric(part, "acc") for part in source_parts(source)]
    raise BenchmarkError(f"--rule {rule!r}: known rules are {', '.join(RULES)} (an unseen target is never a rule's input)")


@dataclass
class Choice:
    method: str
    source: str
    rule: str
    ranked: list[tuple[float, ModelRecord]]  # best first

    @property
    def best(self) -> ModelRecord:
        return self.ranked[0][1]

    def description(self, protocol: str) -> str:
        lines = [f"Picked by the rule `{self.rule}` ({RULES[self.rule]}; no unseen target read) among "
                 f"{len(self.ranked)} models of {self.method} trained on {self.source}, protocol {protocol}:"]
        for score, m in self.ranked:
            point = ", ".join(f"{k.removeprefix(schema.SWEEP_PREFIX)}={v}" for k, v in sorted(m.params.items())
                              if k.startswith(schema.SWEEP_PREFIX))
            lines.append(f"- seed {m.params.get('seed')}{', ' + point if point else ''}, backbone "
                         f"{m.params.get('backbone')}: {100 * score:.2f}% (model {m.model_id}, run {m.run_id})")
        return "\n".join(lines)


def choose(models: list[ModelRecord], rule: str) -> list[Choice]:
    """Per (method, source) of `models`, them ranked by `rule`: the highest score first, then the
    lowest seed, then the model id (a deterministic pick among equals)."""
    groups: dict[tuple[str, str], list[ModelRecord]] = {}
    for m in models:
        groups.setdefault((m.params.get("method", ""), m.params.get("source", "")), []).append(m)
    out = []
    for (method, source), members in sorted(groups.items()):
        keys = score_key(rule, source)
        scored = []
        for m in members:
            values = [m.metric(k) for k in keys]
            if any(v is None for v in values):
                missing = next(k for k, v in zip(keys, values) if v is None)
                hint = " (its job had no validation split: recipe.val_fraction = 0; try --rule source_test)" \
                    if rule == "source_val" else ""
                raise BenchmarkError(f"model {m.model_id} ({m.name}) has no metric {missing}{hint}")
            scored.append((sum(values) / len(values), m))
        scored.sort(key=lambda sm: (-sm[0], int(sm[1].params.get("seed", 0) or 0), sm[1].model_id))
        out.append(Choice(method, source, rule, scored))
    return out


def register(store: ResultStore, protocol: str, method: str, source: str | None, rule: str,
             alias: str = DEFAULT_ALIAS) -> list[tuple[Choice, str, str, bool]]:
    """(choice, registered name, version, made now) per (method, source) of the protocol."""
    if not store.has_models:
        raise store.no_models("register models")
    experiment = store.experiment(protocol, create=False)
    if experiment is None:
        raise BenchmarkError(f"no experiment {protocol!r} in {store.uri}")
    query = f"params.protocol = '{protocol}' AND params.method = '{method}'"
    if source:
        query += f" AND params.source = '{source}'"
    models = [m for m in store.models(experiment, query) if m.status == "READY"]
    if not models:
        raise BenchmarkError(f"no model of method {method!r}{f' trained on {source!r}' if source else ''} in protocol "
                             f"{protocol!r} of {store.uri} (grids run before models were logged: "
                             "`benchmark register --backfill` first)")
    from .logged_model import model_name  # (torch and MLflow's pyfunc: not for `register --help`)

    out = []
    for choice in choose(models, rule):
        name = model_name(protocol, choice.method, choice.source)
        version, made = store.register(name, choice.best, alias, choice.description(protocol))
        out.append((choice, name, version, made))
    return out


def backfill(store: ResultStore, protocol: str) -> tuple[int, int]:
    """A LoggedModel for every FINISHED job run of the protocol that has none, from the run's
    `model/` checkpoint (the weights are then kept twice: the run's copy is left as it was).
    (made, already had one)."""
    if not store.has_models:
        raise store.no_models("log models for its runs")
    experiment = store.experiment(protocol, create=False)
    if experiment is None:
        raise BenchmarkError(f"no experiment {protocol!r} in {store.uri}")
    from .logged_model import log

    made = had = 0
    for run in store.runs(experiment, jobs_only=True):
        if run.status != "FINISHED":
            continue
        if store.model_of_run(run.run_id) is not None:
            had += 1
            continue
        history = store.metric_history(run.run_id, schema.MEAN_ACC)
        if not history:
            raise BenchmarkError(f"run {run.run_id}: FINISHED without {schema.MEAN_ACC}, not a job run this harness wrote")
        with tempfile.TemporaryDirectory() as tmp:
            folder = store.download(run.run_id, "model", Path(tmp))
            log(store, run.run_id, folder, history[-1][0])
        made += 1
    return made, had
