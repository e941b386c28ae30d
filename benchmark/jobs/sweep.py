"""Hyperparameter sweeps: a protocol's `[sweep]` table, expanded into points of the grid.

    [sweep]                                       a grid: every combination of the listed values
    "hparams.cafe.sep_weight" = [0.5, 1.5, 5]
    "hparams.cafe.div_weight" = [1.5, 5, 15]

    [sweep]                                       random search (DomainBed's): `random` points
    random = 8                                    drawn with `seed` from the stated ranges
    seed = 0
    [sweep.ranges]
    "hparams.cafe.sep_weight" = { log_uniform = [0.15, 15] }
    "hparams.cafe.div_weight" = { uniform = [0.5, 50] }
    "hparams.cafe.div_norm" = { choice = ["code", "paper"] }

    [sweep]                                       listed points: each one as written ({} is the
    points = [{}, { "recipe.swad" = true },       protocol itself), e.g. a method with and without
              { "recipe.sam_rho" = 0.05 }]        each domain-generalization recipe

Keys are `hparams.<method>.<name>` or `recipe.<name>`; `benchmark run --sweep KEY=v1,v2` adds a
grid key. Each point is applied to the protocol like `--set`, so swept values are in the job
hash through the hyperparameters or recipe they change; jobs are tagged `sweep.<key>` with the
values that apply to their method.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

from ..core.errors import BenchmarkError

DISTRIBUTIONS = ("uniform", "log_uniform", "choice")


@dataclass(frozen=True)
class Sweep:
    grid: dict[str, list[Any]] = field(default_factory=dict)
    random: int = 0
    seed: int = 0
    ranges: dict[str, dict[str, list[Any]]] = field(default_factory=dict)
    listed: tuple[dict[str, Any], ...] = ()

    @classmethod
    def parse(cls, table: dict[str, Any], where: str) -> "Sweep":
        table = dict(table)
        random, seed, ranges = table.pop("random", 0), table.pop("seed", 0), table.pop("ranges", {})
        listed = table.pop("points", [])
        if not isinstance(listed, list) or not all(isinstance(p, dict) for p in listed):
            raise BenchmarkError(f"{where}: sweep.points: expected a list of tables, e.g. "
                                 "[{}, { \"recipe.swad\" = true }]")
        for point in listed:
            for key in point:
                check_key(key, f"{where}: sweep.points")
        if listed and (table or random):
            raise BenchmarkError(f"{where}: sweep: give listed points, grid values or `random`, one of them")
        for key, values in table.items():
            check_key(key, f"{where}: sweep")
            if not isinstance(values, list) or not values:
                raise BenchmarkError(f"{where}: sweep.{key!r}: expected a non-empty list of values")
        if not isinstance(random, int) or random < 0 or not isinstance(seed, int):
            raise BenchmarkError(f"{where}: sweep.random and sweep.seed must be integers, random >= 0")
        if random and table:
            raise BenchmarkError(f"{where}: sweep: give grid values or `random` with [sweep.ranges], not both")
        if random and not ranges:
            raise BenchmarkError(f"{where}: sweep.random = {random} needs [sweep.ranges]")
        for key, spec in ranges.items():
            check_key(key, f"{where}: sweep.ranges")
            if not isinstance(spec, dict) or len(spec) != 1 or next(iter(spec)) not in DISTRIBUTIONS:
                raise BenchmarkError(f"{where}: sweep.ranges.{key!r}: expected one of "
                                     f"{', '.join(f'{{ {d} = [...] }}' for d in DISTRIBUTIONS)}")
            kind, args = next(iter(spec.items()))
            if kind != "choice" and (len(args) != 2 or not args[0] < args[1] or (kind == "log_uniform" and args[0] <= 0)):
                raise BenchmarkError(f"{where}: sweep.ranges.{key!r}: {kind} needs [low, high] with "
                                     f"{'0 < ' if kind == 'log_uniform' else ''}low < high")
        return cls(table, random, seed, ranges, tuple(listed))

    def with_grid(self, key: str, values: list[Any]) -> "Sweep":
        check_key(key, "--sweep")
        if self.random or self.listed:
            raise BenchmarkError(f"--sweep {key}: the protocol's sweep is a random search or a list of points; "
                                 "a grid key cannot join it")
        return Sweep({**self.grid, key: values}, self.random, self.seed, self.ranges)

    def points(self) -> list[dict[str, Any]]:
        """Every point: dotted key -> value ([{}] without a sweep)."""
        if self.listed:
            return [dict(p) for p in self.listed]
        if self.random:
            import numpy as np

            rng = np.random.default_rng(self.seed)
            points = []
            for _ in range(self.random):
                point = {}
                for key, spec in sorted(self.ranges.items()):
                    kind, args = next(iter(spec.items()))
                    if kind == "choice":
                        point[key] = args[int(rng.integers(len(args)))]
                    elif kind == "uniform":
                        point[key] = round(float(rng.uniform(*args)), 6)
                    else:
                        point[key] = round(float(np.exp(rng.uniform(np.log(args[0]), np.log(args[1])))), 6)
                points.append(point)
            return points
        keys = sorted(self.grid)
        return [dict(zip(keys, values)) for values in itertools.product(*(self.grid[k] for k in keys))]

    @property
    def keys(self) -> list[str]:
        if self.listed:
            return sorted({k for p in self.listed for k in p})
        return sorted(self.ranges if self.random else self.grid)


def check_key(key: str, where: str) -> None:
    parts = key.split(".")
    if not ((parts[0] == "hparams" and len(parts) == 3) or (parts[0] == "recipe" and len(parts) == 2)):
        raise BenchmarkError(f"{where}: {key!r}: a swept key is hparams.<method>.<name> or recipe.<name>")


def applies_to(key: str, method: str) -> bool:
    """Whether a swept key changes `method`'s jobs (recipe keys change every method's)."""
    parts = key.split(".")
    return parts[0] == "recipe" or parts[1] == method

