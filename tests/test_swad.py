"""SWAD (benchmark.training.extensions.swad.py): the LossValley rule against khanrc/swad's on scripted
validation-loss sequences (the member lists below were derived by running upstream's
`LossValley.update_and_evaluate` and `get_final_model` by hand, quirks included), the clean rule,
the averaged weights against the mean of the iterates, the BatchNorm recomputation, resume, and the
recipe switch through the shared loop, the runner and the `recipes` table."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from benchmark.core.errors import BenchmarkError
from benchmark.training.recipe import Recipe
from benchmark.training.extensions.swad import Average, LossValley, Swad, recompute_bn

# Upstream's quirk d: converged at the third evaluation, before Qs (6) is full.
EARLY = [1.0, 1.1, 1.2, 1.0, 0.9, 0.95, 1.0]
# A full Qs at convergence (evaluation i at step 100 i): converged at evaluation 8 (step 600),
# tau = 1.3 x mean(1.0, 1.05, 1.1) = 1.365, dead at evaluation 18.
VALLEY = [5, 4, 3, 2, 1.5, 1.2, 1.0, 1.05, 1.1, 1.02, 1.08, 1.1, 1.2, 1.5, 2, 3, 4, 5, 6]


class Recorded(LossValley):
    """LossValley noting which segment (by its index) each addition to the average was."""

    def _add(self, segment, **steps):
        self.members = [*getattr(self, "members", []), int(segment.params[0].argmax())]
        super()._add(segment, **steps)


def feed(losses: list[float], quirks: bool = True, size: int = 0, **windows) -> Recorded:
    """Feed segment i (weights: the i-th of `size` unit vectors, ending at step 100 i) with loss i."""
    valley = Recorded(quirks=quirks, **windows)
    for i, loss in enumerate(losses):
        weights = torch.zeros(size or len(losses), dtype=torch.float64)
        weights[i] = 1
        valley.update(Average([weights], [], 1, 100 * i, 100 * i), loss)
        if valley.dead_valley:
            break
    return valley


def scripted(losses: list[float], quirks: bool = True, **windows) -> tuple[Recorded, Average]:
    """`feed`, then the end of training."""
    valley = feed(losses, quirks, **windows)
    return valley, valley.final()


def multiplicities(final: Average) -> list[int]:
    return [round(x) for x in (final.params[0] * final.n_averaged).tolist()]


def test_upstream_rule_converging_before_qs_fills_adds_the_oldest_again_and_again():
    valley, final = scripted(EARLY)
    assert valley.converge_step == 0 and valley.threshold == pytest.approx(1.3 * 1.1)
    assert valley.members == [1, 2, 0, 0, 0, 1, 2, 3, 4, 5, 6]  # quirks b (segment 0 skipped first) and d
    assert final.n_averaged == 11 and multiplicities(final) == [3, 2, 2, 1, 1, 1, 1]
    assert (final.start_step, final.end_step) == (100, 600)


def test_upstream_rule_with_a_full_window_double_counts_the_converged_segment_and_stops_dead():
    valley, final = scripted(VALLEY)
    assert valley.converge_step == 600 and valley.threshold == pytest.approx(1.365)
    assert valley.dead_valley and valley.dead_step == 1800
    assert valley.members == [6, 6, 7, 8, 9, 10, 11, 12]  # quirk b drops 5, quirk c counts 6 twice
    assert final.n_averaged == 8 and (final.start_step, final.end_step) == (600, 1200)


def test_clean_rule_counts_each_segment_of_the_valley_once():
    valley, final = scripted(EARLY, quirks=False)
    assert valley.members == [0, 1, 2, 3, 4, 5, 6] and multiplicities(final) == [1] * 7
    valley, final = scripted(VALLEY, quirks=False)
    assert valley.members == [5, 6, 7, 8, 9, 10, 11, 12] and valley.dead_step == 1800
    assert (final.start_step, final.end_step) == (500, 1200)


def test_quirk_a_the_first_addition_overwrites_the_converged_copy():
    # Converged at segment 1 (evaluation 3); the start search stops at segment 0 (above tau), so
    # upstream adds segments 2 and 3 only: the average made from segment 1 is overwritten by 2.
    valley = feed([9, 1.0, 1.2, 1.3])
    assert valley.converge_step == 100 and valley.members == [2, 3]
    assert valley.final_model.n_averaged == 2 and valley.final_model.params[0].tolist() == [0, 0, 0.5, 0.5]
    clean = feed([9, 1.0, 1.2, 1.3], quirks=False)
    assert clean.members == [1] and clean.final_model.params[0].tolist() == [0, 1, 0, 0]


def test_never_converged_gives_the_last_segment():
    valley, final = scripted([3.0, 2.0, 1.0, 0.5])
    assert not valley.is_converged and final.end_step == 300 and final.params[0].argmax() == 3


@pytest.mark.parametrize("n_tolerance", [2, 3], ids=["tolerance<converge", "tolerance=converge"])
def test_the_other_window_branches_run(n_tolerance):
    valley, final = scripted(VALLEY, n_converge=3, n_tolerance=n_tolerance)
    assert valley.converge_step == 600 and final.n_averaged >= 1


def test_averaged_weights_are_the_mean_of_the_iterates_in_the_window():
    """A real model trained step by step: with the clean rule and segments of equal length, the
    final weights equal the mean of the weights after every step of the averaged segments."""
    torch.manual_seed(0)
    model = nn.Linear(3, 2).double()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    swad = Swad(model, eval_steps=4, valley=LossValley(quirks=False))
    iterates: dict[int, torch.Tensor] = {}
    losses = iter([5.0, 1.0, 1.1, 1.2, 1.05, 1.1, 1.0, 1.15, 3.0, 3.0, 3.0, 3.0, 3.0, 3.0])
    x, y = torch.randn(8, 3, dtype=torch.float64), torch.randint(0, 2, (8,))
    for step in range(4 * 13 + 1):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
        iterates[step] = torch.cat([p.detach().flatten() for p in model.parameters()]).clone()
        swad.after_step(step)
        if swad.due(step) and swad.end_segment(step, next(losses)):
            break
    final = swad.apply()
    window = [iterates[s] for s in range(final.start_step, final.end_step + 1)]
    expected = torch.stack(window).mean(0)
    got = torch.cat([p.detach().flatten() for p in model.parameters()])
    assert final.n_averaged == len(window) // 4
    assert torch.allclose(got, expected, atol=1e-12), (got - expected).abs().max()


def test_recompute_bn_is_a_cumulative_average_over_the_batches():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4))
    batches = [torch.randn(16, 4) * 3 + 1 for _ in range(3)]
    recompute_bn(model, batches, lambda x: model(x))
    hidden = torch.cat([model[0](b) for b in batches]).detach()
    assert torch.allclose(model[1].running_mean, hidden.mean(0), atol=1e-5)
    per_batch_var = torch.stack([model[0](b).detach().var(0, unbiased=True) for b in batches]).mean(0)
    assert torch.allclose(model[1].running_var, per_batch_var, atol=1e-5)
    assert model[1].momentum == 0.1 and model.training


def test_the_rule_resumes_from_its_state():
    first = feed(VALLEY[:10], size=len(VALLEY))
    saved = first.state_dict()
    restored = Recorded()
    restored.load_state_dict(saved)
    restored.members = list(first.members)
    for i, loss in enumerate(VALLEY[10:], start=10):
        weights = torch.zeros(len(VALLEY), dtype=torch.float64)
        weights[i] = 1
        restored.update(Average([weights], [], 1, 100 * i, 100 * i), loss)
    whole, final = scripted(VALLEY)
    assert restored.members == whole.members
    assert torch.equal(restored.final().params[0], final.params[0])


def test_recipe_fields_are_checked_and_hashed_only_when_on():
    with pytest.raises(BenchmarkError, match="swad_eval_steps"):
        Recipe(swad_eval_steps=0)
    assert "swad" not in Recipe().identity() and Recipe(swad=True).identity()["swad"] is True
    assert Recipe(swad=True).trains_alone() and Recipe(swad=True, sam_rho=0.05).dg_label() == "swad+sam"


def test_the_loop_averages_stops_early_and_logs_the_valley():
    from benchmark.data import DATASETS, decode_split
    from benchmark.models.backbones import BackboneSpec
    from benchmark.training.method import Components, MemoryLog
    from benchmark.training.plugins import build_method

    data = decode_split(DATASETS.get("synth5/studio").load(None, "test", scale=0.02), 32)
    method = build_method("erm", {"lr": 3e-3}, Components(BackboneSpec("mobilenet_v2", "none")))
    recipe = Recipe(epochs=3, batch_size=8, input_size=32, seed=1, progress=False, prefetch=0, swad=True,
                    swad_eval_steps=2, swad_bn_batches=2)
    with pytest.raises(BenchmarkError, match="validation split"):
        method.fit(data, recipe=recipe, device=torch.device("cpu"), log=MemoryLog())
    log, ends = MemoryLog(), []
    method.fit(data, recipe=recipe, device=torch.device("cpu"), log=log, epoch_end=ends.append, validation=data)
    summary = next(values for _, values in log.history if "swad/evaluations" in values)
    assert summary["swad/evaluations"] >= 3 and summary["swad/segments_averaged"] >= 1
    assert "swad_valley.png" in log.figures
    assert ends[-1] == log.history[-1][0]  # the averaged model is what the last evaluation saw
    assert not math.isnan(summary["swad/end_step"])


def test_methods_the_loop_does_not_train_and_jobs_without_validation_are_refused_before_training(monkeypatch):
    from benchmark.jobs.plan import DataPlan, expand, plan_from
    from benchmark.jobs.protocol import load_protocol

    def jobs(methods, **sets):
        protocol = load_protocol("synth5", {"seeds": "[0]", "sources": '["synth5/studio"]', **sets})
        return expand(protocol, methods, plan_from(protocol, None, {}))

    (job,) = jobs(["erm"], **{"recipe.swad": "true"})  # synth5 has a validation split
    assert job.recipe.swad
    monkeypatch.setattr(DataPlan, "has_split", lambda self, dataset, split: split != "val")
    with pytest.raises(BenchmarkError, match=r"recipe.swad: erm has no validation split.*\(erm on synth5/studio\)"):
        jobs(["erm"], **{"recipe.swad": "true"})
    (job,) = jobs(["erm"], **{"recipe.swad": "true", "recipe.val_fraction": "0.2"})
    assert job.recipe.swad
    with pytest.raises(BenchmarkError, match="recipe.sam_rho: method clip_probe is not trained by the shared loop"):
        jobs(["clip_probe"], **{"recipe.sam_rho": "0.05"})


@pytest.mark.slow
def test_a_sweep_of_each_recipe_on_erm_and_cafe_ends_in_the_recipes_table(tmp_path, capsys):
    from benchmark.cli import main

    from .test_runner import write_protocol
    from .test_tables import markdown_rows

    protocol = write_protocol(tmp_path, epochs=2)
    uri = f"jsonl:{tmp_path}/runs"
    args = ["run", "--protocol", str(protocol), "--tracking-uri", uri, "--methods", "erm,cafe",
            "--set", "recipe.swad_eval_steps=2",
            "--sweep", "recipe.swad=false,true", "--sweep", "recipe.sam_rho=0,0.05"]
    assert main(args) == 0
    capsys.readouterr()
    assert main(["run", "--protocol", str(protocol), "--tracking-uri", uri, "--methods", "erm,cafe",
                 "--set", "recipe.mixstyle=1,2,3"]) == 0
    capsys.readouterr()
    out = tmp_path / "recipes.md"
    assert main(["table", "--protocol", "tiny", "--tracking-uri", uri, "--table", "recipes", "--out", str(out)]) == 0
    text = out.read_text()
    md = markdown_rows(text)
    assert md[0] == ["Method", *(f"{r} {k}" for r in ("none", "mixstyle", "sam", "swad", "swad+sam")
                                  for k in ("unseen", "in-domain"))]
    body = {r[0]: r[1:] for r in md[2:] if r[0] in ("erm", "cafe")}
    assert set(body) == {"erm", "cafe"}
    assert all(c.replace("*", "").strip("!†").replace(".", "", 1).isdigit() for row in body.values() for c in row), body
    for method in ("erm", "cafe"):
        for recipe in ("swad", "sam", "mixstyle"):
            assert f"{method}+{recipe} − {method} (2 (source, seed) units): in-domain" in text
    assert main(["compare", "cafe+swad", "cafe", "--protocol", "tiny", "--tracking-uri", uri]) == 0
    assert "cafe+swad vs cafe" in capsys.readouterr().out


def test_a_stopped_swad_job_resumes_to_the_same_average(tmp_path):
    """SWAD's segments and windows travel in the epoch checkpoint: stopped after epoch 1 and
    resumed, the averaged weights and the valley equal an uninterrupted run's."""
    from benchmark.data import DATASETS, decode_split
    from benchmark.models.backbones import BackboneSpec
    from benchmark.training.method import Components, MemoryLog
    from benchmark.training.plugins import build_method
    from benchmark.training.resume import ResumePoint

    from .test_resume import StopDuring

    data = decode_split(DATASETS.get("synth5/studio").load(None, "test", scale=0.02), 32)
    validation = decode_split(DATASETS.get("synth5/studio").load(None, "val", scale=0.05), 32)
    recipe = Recipe(epochs=3, batch_size=8, input_size=32, seed=3, progress=False, prefetch=0, swad=True,
                    swad_eval_steps=1, swad_n_tolerance=4)
    components = Components(BackboneSpec("mobilenet_v2", "none"))

    def fit(log, resume=None):
        method = build_method("erm", {"lr": 3e-2}, components)
        method.fit(data, recipe=recipe, device=torch.device("cpu"), log=log, resume=resume, validation=validation)
        return method

    plain_log = MemoryLog()
    plain = fit(plain_log)
    with pytest.raises(SystemExit):
        fit(StopDuring(2), ResumePoint.open(tmp_path, "job", "run-1"))
    resumed_log = MemoryLog()
    resumed = fit(resumed_log, ResumePoint.open(tmp_path, "job", "run-2"))
    def summary(log):
        values = next(v for _, v in log.history if "swad/evaluations" in v)
        return {k: str(v) for k, v in values.items() if k.startswith("swad/")}  # str: nan equals nan

    assert summary(resumed_log) == summary(plain_log)
    assert summary(plain_log)["swad/converge_step"] != "nan"  # converged after the stop, on segments saved before it
    for key, value in plain.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key
