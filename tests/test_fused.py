"""Fused training (benchmark.training.fused): K jobs as one stacked model, each as it trains alone.

The unit compared is the job: its loss, gradients and update after one step, and after a short
fit its accuracies and predictions, fused vs trained alone.

Why one step is checked twice: in float64 the fused step must equal the job's own step to
rounding (1e-9), which any mistake of the stacking (a model fed another job's batch, seed, drop
mask or encoder features, a shared BatchNorm statistic) would break by orders of magnitude. In
float32 the two arithmetics differ in the last bits, and a ReLU whose input is rounding-level
flips between them, which moves some gradients of the layers below it by a few percent
(measured on ResNet-18 at 48 px: the unfused float32 gradients differ from the float64 ones by
up to 14% of a tensor's scale, the fused ones by up to 9%); there the losses must agree to 1e-6,
the head's gradients to 1e-5, and the whole gradient in direction.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from benchmark.data import DATASETS, decode_split
from benchmark.models.backbones import BackboneSpec
from benchmark.training.augment import normalize
from benchmark.training.fused import FusedModels, fit_fused
from benchmark.training.method import Batch, Components, MemoryLog
from benchmark.training.plugins import build_method
from benchmark.training.recipe import Recipe
from benchmark.training.trainer import seed_everything

from .test_cafe import linear_encoder

# cafe has the most machinery (drop masks, encoder features): the inner loop checks it; the rest
# run with the slow tests.
FUSING = [pytest.param("erm", marks=pytest.mark.slow), "cafe", pytest.param("clip_ft", marks=pytest.mark.slow),
          pytest.param("eac", marks=pytest.mark.slow)]
SEEDS = [3, 11, 29]
DOMAINS = ["synth5/studio", "synth5/film", "synth5/wild"]  # one job per source, each with its own seed
SIZE, BATCH = 32, 16  # small: float64 on the CPU is slow, and its result does not depend on size


def real_batches(size: int, batch: int):
    """One batch of real synth5 images from each of three domains."""
    batches = []
    for domain in DOMAINS:
        data = decode_split(DATASETS.get(domain).load(None, "train", scale=0.1), size)
        batches.append((normalize(torch.from_numpy(data.read(slice(0, batch)))), torch.from_numpy(data.labels[:batch])))
    return batches


@pytest.fixture(scope="module")
def three_batches():
    return real_batches(SIZE, BATCH)


def built(name: str, seed: int, components: Components, dtype=torch.float32, size: int = SIZE):
    method = build_method(name, {}, components)
    seed_everything(seed)  # as trainer.fit does before building
    method.build(torch.device("cpu"), size, None, seed)
    method.model.train()
    method.model.to(dtype)
    return method


def encoder_features(components, x, dtype):
    return components.encoder(x.float()).to(dtype)


def step_alone(method, x, y, components, dtype):
    batch = method.with_extras(Batch(x.to(dtype), y, np.arange(len(y))))
    if method.trains_on_encoder():
        batch.extra["encoder"] = encoder_features(components, x, dtype)
    loss, _ = method.training_step(batch)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in method.model.named_parameters()}


def step_fused(methods, batches, components, dtype):
    batch_size = len(batches[0][1])
    fused = FusedModels(methods)
    prepared = [m.with_extras(Batch(x.to(dtype), y, np.arange(len(y)))) for m, (x, y) in zip(methods, batches)]
    if methods[0].trains_on_encoder():
        features = encoder_features(components, torch.cat([x for x, _ in batches]), dtype).split(batch_size)
        for batch, feature in zip(prepared, features):
            batch.extra["encoder"] = feature
    losses, _ = fused.losses(prepared)
    losses.sum().backward()
    return fused, losses.detach()


def relative_gap(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| relative to the tensor's scale (its largest |entry|)."""
    return float((a - b).abs().max() / a.abs().max().clamp_min(1e-30))


@pytest.mark.parametrize("name", FUSING)
def test_fused_step_equals_each_jobs_own_step_in_float64(name, three_batches):
    components = Components(BackboneSpec("resnet18", "none"), linear_encoder())
    alone = [step_alone(built(name, s, components, torch.float64), x, y, components, torch.float64)
             for s, (x, y) in zip(SEEDS, three_batches)]
    methods = [built(name, s, components, torch.float64) for s in SEEDS]
    fused, losses = step_fused(methods, three_batches, components, torch.float64)
    for k, (loss, grads) in enumerate(alone):
        assert abs(float(loss) - float(losses[k])) <= 1e-12 * abs(float(loss))
        worst = max(relative_gap(g, fused.params[n].grad[k]) for n, g in grads.items())
        assert worst < 1e-9, f"job {k}: gradients differ by {worst:.1e} of their scale"
    # One Adam step each: the parameters after the update agree wherever the gradient is above
    # rounding (Adam's first update is +-lr for any nonzero gradient, whatever its size).
    jobs = [built(name, s, components, torch.float64) for s in SEEDS]
    for method, (_, grads) in zip(jobs, alone):
        for n, p in method.model.named_parameters():
            p.grad = grads[n]
        torch.optim.Adam(method.model.parameters(), lr=1e-3, weight_decay=1e-4).step()
    torch.optim.Adam(fused.param_groups(), lr=1e-3, weight_decay=1e-4).step()
    for k, method in enumerate(jobs):
        for n, p in method.model.named_parameters():
            sure = alone[k][1][n].abs() > 1e-9 * alone[k][1][n].abs().max()
            assert torch.allclose(p[sure], fused.params[n][k][sure], rtol=0, atol=1e-9), n


@pytest.mark.parametrize("name", [pytest.param("erm", marks=pytest.mark.slow), "cafe"])
def test_fused_step_in_float32_agrees_to_the_last_bits_above_every_relu(name):
    """float32: the losses within 1e-6 and the head's gradients (above every ReLU) within 1e-5 of
    their scale; below a ReLU a rounding-level input may flip, so the whole gradient is compared
    by direction (cosine >= 0.999). At 48 px, batch 32 (at 32 px, batch 16 the losses part by 1.2e-6)."""
    components = Components(BackboneSpec("resnet18", "none"), linear_encoder())
    batches = real_batches(48, 32)
    alone = [step_alone(built(name, s, components, size=48), x, y, components, torch.float32)
             for s, (x, y) in zip(SEEDS, batches)]
    fused, losses = step_fused([built(name, s, components, size=48) for s in SEEDS], batches, components,
                               torch.float32)
    for k, (loss, grads) in enumerate(alone):
        assert abs(float(loss) - float(losses[k])) <= 1e-6 * max(1.0, abs(float(loss)))
        for n in ("fc.weight", "fc.bias"):
            assert relative_gap(grads[n], fused.params[n].grad[k]) < 1e-5, n
        ours = torch.cat([fused.params[n].grad[k].flatten() for n in grads])
        own = torch.cat([g.flatten() for g in grads.values()])
        assert float(torch.nn.functional.cosine_similarity(own.double(), ours.double(), dim=0)) >= 0.999


def short_recipe(seed: int, steps: int = 2) -> Recipe:
    return Recipe(epochs=2, batch_size=BATCH, input_size=SIZE, seed=seed, samples_per_epoch=BATCH * steps,
                  progress=False)


@pytest.fixture(scope="module")
def sources():
    """(train, test) of three synth5 domains at SIZE px."""
    reader = {d: DATASETS.get(d) for d in DOMAINS}
    return [(decode_split(reader[d].load(None, "train", scale=0.15), SIZE),
             decode_split(reader[d].load(None, "test", scale=0.15), SIZE)) for d in DOMAINS]


@pytest.fixture
def float64_training(monkeypatch):
    """The shared loop in float64: models built in float64 and every batch cast to it (the
    frozen encoder still computes in float32, the same features for both arithmetics)."""
    from benchmark.training.numerics import Numerics
    from benchmark.training.trained_method import TrainedMethod

    build = TrainedMethod.build

    def build_float64(self, *args, **kwargs):
        build(self, *args, **kwargs)
        self.model.double()

    monkeypatch.setattr(Numerics, "layout", lambda self, x: x.to(torch.float64))
    monkeypatch.setattr(TrainedMethod, "build", build_float64)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["cafe"])  # the most machinery: drop masks, encoder features (50 s in float64)
def test_two_epoch_jobs_fused_equal_their_unfused_twins_in_float64(name, sources, components, float64_training):
    """K = 3 jobs (three sources, three seeds) trained 2 epochs fused vs alone, end to end through
    both loops (samplers, augmentation streams, drop masks, BatchNorm statistics, Adam, schedule,
    write-back): in float64 every prediction is equal and every (float32) probability within 1e-5.

    (In float32 the two arithmetics part in the last bits, and these short high-rate runs are
    chaotic: the same job at 1 vs 2 threads predicts alike on only 65-87% of the test images.)"""
    hp = {"lr": 2e-3}
    alone, alone_logs = [], []
    for seed, (train, test) in zip(SEEDS, sources):
        method = build_method(name, hp, components)
        alone_logs.append(MemoryLog())
        method.fit(train, recipe=short_recipe(seed), device=torch.device("cpu"), log=alone_logs[-1])
        alone.append(method.predict(test))
    methods = [build_method(name, hp, components) for _ in SEEDS]
    logs = [MemoryLog() for _ in SEEDS]
    errors = fit_fused(methods, [train for train, _ in sources], recipes=[short_recipe(s) for s in SEEDS],
                       device=torch.device("cpu"), logs=logs, epoch_ends=[None] * 3)
    assert errors == [None] * 3
    for method, log, own_log, plain, (_, test) in zip(methods, logs, alone_logs, alone, sources):
        fused = method.predict(test)
        np.testing.assert_array_equal(plain.argmax(1), fused.argmax(1))
        np.testing.assert_allclose(plain, fused, rtol=0, atol=1e-5)  # probabilities are float32
        assert log.series("train/loss") == pytest.approx(own_log.series("train/loss"), rel=1e-9)
        assert log.series("lr") == pytest.approx([2e-3, 2e-3 * 0.9])


def test_a_diverging_job_fails_alone_and_the_others_finish(sources, components, monkeypatch):
    """Job 1's loss is NaN from its first step (its draw multiplies the loss by NaN): it stops
    with TrainingDiverged; jobs 0 and 2 train both epochs and predict."""
    from methods.erm import Erm

    def step_extras(self, batch):
        return {"scale": torch.tensor(float("nan") if self.explode else 1.0)}

    plain_step = Erm.training_step

    def training_step(self, batch):
        loss, parts = plain_step(self, batch)
        return loss * batch.extra["scale"], parts

    monkeypatch.setattr(Erm, "step_extras", step_extras)
    monkeypatch.setattr(Erm, "training_step", training_step)
    methods = [build_method("erm", {}, components) for _ in SEEDS]
    for k, method in enumerate(methods):
        method.explode = k == 1
    logs = [MemoryLog() for _ in SEEDS]
    recipes = [dataclasses.replace(short_recipe(s), samples_per_epoch=64) for s in SEEDS]
    evaluated = []
    errors = fit_fused(methods, [train for train, _ in sources], recipes=recipes, device=torch.device("cpu"),
                       logs=logs, epoch_ends=[lambda e, k=k: evaluated.append((k, e)) for k in range(3)])
    assert errors[0] is None and errors[2] is None
    assert type(errors[1]).__name__ == "TrainingDiverged" and "epoch 1" in str(errors[1])
    assert sorted(evaluated) == [(0, 1), (0, 2), (2, 1), (2, 2)] and logs[1].history == []
    for k in (0, 2):
        assert np.isfinite(methods[k].predict(sources[k][1])).all()
        assert all(np.isfinite(v) for v in logs[k].series("train/loss"))


def test_a_group_that_cannot_fuse_is_refused_before_training(sources, components):
    from benchmark.core.errors import BenchmarkError

    methods = [build_method("erm", {}, components), build_method("erm", {"lr": 1e-2}, components)]
    with pytest.raises(BenchmarkError, match="every hyperparameter"):
        fit_fused(methods, [sources[0][0]] * 2, recipes=[short_recipe(0), short_recipe(1)],
                  device=torch.device("cpu"), logs=[MemoryLog()] * 2, epoch_ends=[None] * 2)
    scn = [build_method("scn", {}, components) for _ in range(2)]
    with pytest.raises(BenchmarkError, match="does not fuse"):
        fit_fused(scn, [sources[0][0]] * 2, recipes=[short_recipe(0), short_recipe(1)],
                  device=torch.device("cpu"), logs=[MemoryLog()] * 2, epoch_ends=[None] * 2)
    with pytest.raises(BenchmarkError, match="epochs of one length"):
        fit_fused([build_method("erm", {}, components) for _ in range(2)], [sources[0][0], sources[1][0]],
                  recipes=[dataclasses.replace(short_recipe(s), samples_per_epoch=None) for s in (0, 1)],
                  device=torch.device("cpu"), logs=[MemoryLog()] * 2, epoch_ends=[None] * 2)


GRID = """
name = "fusegrid"
version = 1
methods = ["erm"]
datasets = ["synth5/studio", "synth5/film"]
seeds = [0, 1]
encoder = "torchvision:mobilenet_v2:imagenet"

[backbone]
name = "mobilenet_v2"
weights = "imagenet"

[recipe]
epochs = 2
batch_size = 16
input_size = 32
samples_per_epoch = 32
progress = false

[dataset_options."synth5/studio"]
scale = 0.03
[dataset_options."synth5/film"]
scale = 0.03
"""


@pytest.mark.slow
def test_a_fused_grid_leaves_one_run_per_job_that_reads_as_an_unfused_one(tmp_path, capsys, monkeypatch):
    """`benchmark run --fuse 4` on 4 jobs (two sources x two seeds), one of them held by another
    claimant when the group claims it: the 3 others train fused, each its own FINISHED run with
    the same parameters and metrics as an unfused run of the grid but numerics.fused = 3; the
    held job is left out (SKIPPED); the table reads the fused store as it reads the plain one."""
    from benchmark.cli import main
    from benchmark.jobs.plan import expand, plan_from
    from benchmark.jobs.protocol import load_protocol
    from benchmark.store import open_store
    from benchmark.store.base import ResultStore

    protocol = tmp_path / "fusegrid.toml"
    protocol.write_text(GRID)
    fused_uri, plain_uri = f"jsonl:{tmp_path / 'fused'}", f"jsonl:{tmp_path / 'plain'}"
    loaded = load_protocol(str(protocol))
    held = expand(loaded, ["erm"], plan_from(loaded, None, None))[3]
    claim = ResultStore.claim

    def claim_but_the_held_job(self, experiment_id, job_hash, run_id, **kwargs):
        if job_hash == held.hash:  # another host claimed it between the grid's listing and the group's claim
            return "RUNNING on another host"
        return claim(self, experiment_id, job_hash, run_id, **kwargs)

    monkeypatch.setattr(ResultStore, "claim", claim_but_the_held_job)
    assert main(["run", "--protocol", str(protocol), "--tracking-uri", fused_uri, "--fuse", "4"]) == 0
    out = capsys.readouterr().out
    assert "3 finished" in out and "[skip] erm on synth5/film (seed 1): RUNNING on another host" in out, out
    monkeypatch.setattr(ResultStore, "claim", claim)
    assert main(["run", "--protocol", str(protocol), "--tracking-uri", plain_uri]) == 0
    runs = {}
    for uri in (fused_uri, plain_uri):
        store = open_store(uri)
        runs[uri] = {r.tags["job_hash"]: r for r in store.runs(store.experiment("fusegrid"), jobs_only=True)}
    fused, plain = runs[fused_uri], runs[plain_uri]
    assert len(fused) == 3 and len(plain) == 4 and held.hash not in fused
    for job_hash, run in fused.items():
        twin = plain[job_hash]
        assert run.status == twin.status == "FINISHED"
        assert run.params["execution.fused"] == "3" and twin.params["execution.fused"] == "1"
        assert set(run.params) == set(twin.params) and set(run.metrics) == set(twin.metrics)
        different = {k for k in run.params if run.params[k] != twin.params[k]}
        assert different == {"execution.fused"}, different
    tables = {}
    for uri in (fused_uri, plain_uri):
        capsys.readouterr()
        assert main(["table", "--protocol", "fusegrid", "--tracking-uri", uri]) == 0
        tables[uri] = [line.split("|")[1].strip() for line in capsys.readouterr().out.splitlines() if line.startswith("|")]
    assert tables[fused_uri] == tables[plain_uri] and "erm" in tables[fused_uri]


@pytest.mark.slow
def test_a_fused_group_stopped_inside_an_epoch_resumes_bit_for_bit(tmp_path):
    """One loop, one resume-point layout: a fused group writes between batches as one job does,
    and a group stopped there ends with the weights of an uninterrupted group, each job's."""
    from benchmark.training.resume import ResumePoint

    from .test_resume import StopInEpoch

    data = decode_split(DATASETS.get("synth5/studio").load(None, "test", scale=0.02), 32)
    recipes = [Recipe(epochs=2, batch_size=2, input_size=32, seed=s, progress=False, prefetch=0) for s in (3, 4)]

    def fit(resume=None):
        methods = [build_method("erm", {"lr": 3e-3}, Components(BackboneSpec("mobilenet_v2", "none"))) for _ in recipes]
        errors = fit_fused(methods, [data, data], recipes=recipes, device=torch.device("cpu"),
                           logs=[MemoryLog(), MemoryLog()], epoch_ends=[None, None], resume=resume)
        assert errors == [None, None]
        return methods

    plain = fit()
    first = ResumePoint.open(tmp_path, "group", "run-1", mid_epoch_s=0.0)
    save = first.save

    def save_then_stop(state):
        save(state)
        if "in_epoch" in state and state["epoch"] == 1 and state["in_epoch"]["batches"] == 3:
            assert state["in_epoch"]["order"].shape[0] == 2 and len(state["jobs"]) == 2  # each job's order and state
            raise StopInEpoch

    first.save = save_then_stop
    with pytest.raises(StopInEpoch):
        fit(first)
    second = ResumePoint.open(tmp_path, "group", "run-2", mid_epoch_s=1e9)
    assert second.resumes_at() == "epoch 2 at batch 4 of 5"
    resumed = fit(second)
    for mine, theirs in zip(resumed, plain):
        for key, value in theirs.model.state_dict().items():
            assert torch.equal(mine.model.state_dict()[key], value), key
