"""Spectral decoupling (benchmark.training.extensions.spectral_decoupling) against DomainBed's
`SD.update`, transcribed in float64: the objective, and the parameters after one Adam step; its
refusal, label and hash; and a row of its own in the recipes table."""

from __future__ import annotations

import copy

import pytest
import torch
from torch.nn import functional as F

from benchmark.core.errors import BenchmarkError
from benchmark.models.backbones import BackboneSpec
from benchmark.training.extensions.spectral_decoupling import SpectralDecoupling
from benchmark.training.method import Batch, Components
from benchmark.training.plugins import build_method
from benchmark.training.recipe import Recipe

CPU = torch.device("cpu")


def domainbed_sd_update(network, optimizer, x, y, sd_reg):
    """DomainBed algorithms.py SD.update on one minibatch (all_x = x), as released."""
    all_p = network(x)
    loss = F.cross_entropy(all_p, y)
    penalty = (all_p ** 2).mean()
    objective = loss + sd_reg * penalty
    optimizer.zero_grad()
    objective.backward()
    optimizer.step()
    return {"loss": loss.item(), "penalty": penalty.item()}, objective


def test_the_objective_and_one_step_equal_domainbeds_in_float64():
    method = build_method("erm", {"lr": 1e-3, "weight_decay": 0.0}, Components(BackboneSpec("mobilenet_v2", "none")))
    method.build(CPU, 16)
    method.model.double().train()
    reference = copy.deepcopy(method.model)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(6, 3, 16, 16, dtype=torch.float64, generator=gen)
    y = torch.tensor([0, 1, 2, 3, 4, 5])
    recipe = Recipe(sd_reg=0.1)
    assert recipe.sd_reg == 0.1 and [c.name for c in recipe.extensions()][1] == "spectral_decoupling"

    extension = SpectralDecoupling(recipe)
    batch = Batch(x, y, torch.arange(6).numpy())
    loss, parts = method.training_step(batch)
    objective = extension.loss(None, batch, loss, parts)
    ours = torch.optim.Adam(method.model.parameters(), lr=1e-3)
    ours.zero_grad()
    objective.backward()
    ours.step()

    theirs = torch.optim.Adam(reference.parameters(), lr=1e-3)
    logged, their_objective = domainbed_sd_update(lambda v: reference["fc"](reference["backbone"](v)), theirs, x, y, 0.1)
    assert abs(objective.item() - their_objective.item()) < 1e-12
    assert abs(parts["sd_penalty"].item() - logged["penalty"]) < 1e-12 and abs(parts["ce"].item() - logged["loss"]) < 1e-12
    for (name, p), q in zip(method.model.named_parameters(), reference.parameters()):
        assert (p - q).abs().max().item() < 1e-12, name


def test_off_by_default_in_the_hash_only_when_set_and_refused_without_training_logits():
    from benchmark.jobs.plan import expand, plan_from
    from benchmark.jobs.protocol import load_protocol

    assert "sd_reg" not in Recipe().identity() and Recipe(sd_reg=0.1).identity()["sd_reg"] == 0.1
    assert Recipe(sd_reg=0.1).dg_label() == "sd" and Recipe(sd_reg=0.1, swad=True).dg_label() == "swad+sd"
    assert Recipe(sd_reg=0.1).trains_alone()
    with pytest.raises(BenchmarkError, match="recipe.sd_reg = -1"):
        Recipe(sd_reg=-1.0)

    def jobs(method, **sets):
        protocol = load_protocol("synth5", {"seeds": "[0]", "sources": '["synth5/studio"]', **sets})
        return expand(protocol, [method], plan_from(protocol, None, {}))

    from benchmark.training.extensions import JobFacts

    facts = JobFacts("outside_method", "resnet18:none", "torchvision", True, False, True, False, True)
    assert "reports no training logits" in SpectralDecoupling.refuse(Recipe(sd_reg=0.1), facts)
    (job,) = jobs("erm", **{"recipe.sd_reg": "0.1"})
    assert job.identity["recipe"]["sd_reg"] == 0.1
    with pytest.raises(BenchmarkError, match="recipe.sd_reg: method clip_probe is not trained by the shared loop"):
        jobs("clip_probe", **{"recipe.sd_reg": "0.1"})


def test_every_method_that_declares_training_logits_records_them():
    """The contract the penalty reads: a method with `training_logits` records (B, 7) logits in
    every step."""
    from benchmark.training.plugins import load_plugins

    registry = load_plugins()
    declared = [n for n in registry.names() if getattr(registry.get(n).cls, "training_logits", False)]
    assert {"erm", "cafe", "eac", "scn", "rul"} <= set(declared)
    for name in ("erm", "eac", "scn", "rul"):
        method = build_method(name, {}, Components(BackboneSpec("mobilenet_v2", "none")))
        method.build(CPU, 32)
        batch = method.with_extras(Batch(torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3]), torch.arange(4).numpy()))
        method.training_step(batch)
        assert batch.outputs["logits"].shape == (4, 7), name
