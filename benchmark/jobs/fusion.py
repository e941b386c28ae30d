"""Which pending jobs train together when `benchmark run --fuse K` asks for fused training.

Jobs fuse when one stacked model can train them as each would train alone
(benchmark.training.fused): the same method (one that declares `fuses`), every hyperparameter,
the recipe except the seed, the backbone and the frozen encoder. Seeds and sources may differ;
the runner further splits a group by the length of the jobs' training splits.
"""

from __future__ import annotations

import json

from ..core.errors import BenchmarkError
from .plan import Job


def fusion_key(job: Job) -> str | None:
    """What jobs must share to train fused; None when the job's method does not fuse."""
    from ..training.fused import recipe_but_seed
    from ..training.plugins import method_entry

    if not method_entry(job.method).cls.fuses or job.recipe.trains_alone():
        return None
    return json.dumps([job.method, job.hparams, recipe_but_seed(job.recipe), job.backbone.id, job.backbone_digest,
                       job.encoder.id if job.encoder else None, job.encoder_digest], sort_keys=True, default=str)


def fusion_groups(jobs: list[Job], size: int) -> list[list[Job]]:
    """The jobs in groups of at most `size` that may fuse, in the grid's order (a group starts
    where its first job stood); jobs that cannot fuse are groups of one."""
    if size < 1:
        raise BenchmarkError(f"--fuse {size}: must be 1 or more")
    groups: list[list[Job]] = []
    open_groups: dict[str, list[Job]] = {}
    for job in jobs:
        key = fusion_key(job) if size > 1 else None
        if key is None:
            groups.append([job])
            continue
        group = open_groups.get(key)
        if group is None or len(group) == size:
            group = open_groups[key] = []
            groups.append(group)
        group.append(job)
    return groups
