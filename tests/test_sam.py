"""SAM and ASAM (benchmark.training.extensions.sam.py) against a transcription of davda54/sam's
`first_step`, `second_step` and `_grad_norm`, with two parameter groups and a frozen parameter;
BatchNorm statistics from the first pass only (its example's `disable_running_stats`); the recipe
switch through the shared loop."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from benchmark.core.errors import BenchmarkError
from benchmark.training.recipe import Recipe
from benchmark.training.extensions.sam import SharpnessAware, running_stats_frozen


def toy() -> tuple[nn.Module, list[dict]]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3))
    model[0].bias.requires_grad_(False)  # frozen: no gradient, neither in the norm nor perturbed
    groups = [{"params": list(model[0].parameters())}, {"params": list(model[2].parameters()), "lr": 0.05}]
    return model, groups


def loss_of(model: nn.Module) -> torch.Tensor:
    x = torch.linspace(-1, 1, 24).reshape(6, 4)
    return nn.functional.cross_entropy(model(x), torch.tensor([0, 1, 2, 0, 1, 2]))


def upstream_step(model: nn.Module, groups: list[dict], rho: float, adaptive: bool) -> None:
    """davda54/sam, transcribed: first_step, the second forward/backward, second_step, base step."""
    params = [p for g in groups for p in g["params"]]
    loss_of(model).backward()
    old = {}
    with torch.no_grad():  # first_step (@torch.no_grad in sam.py)
        norm = torch.norm(torch.stack([((torch.abs(p) if adaptive else 1.0) * p.grad).norm(p=2)
                                       for p in params if p.grad is not None]), p=2)
        for p in params:
            if p.grad is None:
                continue
            old[p] = p.data.clone()
            p.add_((torch.pow(p, 2) if adaptive else 1.0) * p.grad * (rho / (norm + 1e-12)))
    for p in params:
        p.grad = None
    loss_of(model).backward()
    with torch.no_grad():  # second_step
        for p in params:
            if p in old:
                p.data = old[p]
    torch.optim.SGD(groups, lr=0.1, momentum=0.0, weight_decay=1e-3).step()


@pytest.mark.parametrize("adaptive", [False, True], ids=["sam", "asam"])
def test_one_step_equals_the_upstream_transcription(adaptive):
    rho = 0.5 if adaptive else 0.05
    reference, reference_groups = toy()
    upstream_step(reference, reference_groups, rho, adaptive)
    model, groups = toy()
    optimizer = torch.optim.SGD(groups, lr=0.1, momentum=0.0, weight_decay=1e-3)
    sam = SharpnessAware(optimizer, rho, adaptive)
    loss_of(model).backward()
    frozen = model[0].bias.clone()
    sam.ascend()
    assert all(p.grad is None for p in model.parameters())
    loss_of(model).backward()
    sam.descend()
    optimizer.step()
    for mine, theirs in zip(model.parameters(), reference.parameters()):
        assert torch.equal(mine, theirs)
    assert torch.equal(model[0].bias, frozen)


def test_the_ascent_is_rho_along_the_normalised_gradient():
    model, groups = toy()
    optimizer = torch.optim.SGD(groups, lr=0.1)
    sam = SharpnessAware(optimizer, 0.05)
    loss_of(model).backward()
    before = {p: p.detach().clone() for p in model.parameters()}
    grads = {p: p.grad.clone() for p in model.parameters() if p.grad is not None}
    norm = torch.sqrt(sum((g ** 2).sum() for g in grads.values()))
    sam.ascend()
    step = torch.sqrt(sum(((p.detach() - before[p]) ** 2).sum() for p in grads))
    assert float(step) == pytest.approx(0.05, rel=1e-5) and norm > 0
    for p, g in grads.items():
        assert torch.allclose(p.detach() - before[p], 0.05 * g / norm, atol=1e-7)
    sam.descend()
    assert all(torch.equal(p, before[p]) for p in model.parameters())


def test_batchnorm_statistics_come_from_the_first_pass_only():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    once = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    once.load_state_dict(model.state_dict())
    x, y = torch.randn(8, 3), torch.tensor([0, 1] * 4)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    sam = SharpnessAware(optimizer, 0.05)
    nn.functional.cross_entropy(model(x), y).backward()
    sam.ascend()
    with running_stats_frozen(model):
        nn.functional.cross_entropy(model(x), y).backward()
    sam.descend()
    once(x)  # one forward in training mode: what the first pass did to the running statistics
    assert torch.equal(model[1].running_mean, once[1].running_mean)
    assert torch.equal(model[1].running_var, once[1].running_var)
    assert model[1].momentum == 0.1  # restored


def test_the_recipe_switch_trains_any_method_and_enters_the_hash_only_when_set(tmp_path):
    from benchmark.data import DATASETS, decode_split
    from benchmark.jobs.fusion import fusion_key
    from benchmark.jobs.plan import expand, plan_from
    from benchmark.jobs.protocol import load_protocol
    from benchmark.models.backbones import BackboneSpec
    from benchmark.training.method import Components, MemoryLog
    from benchmark.training.plugins import build_method

    data = decode_split(DATASETS.get("synth5/studio").load(None, "test", scale=0.02), 32)
    method = build_method("erm", {}, Components(BackboneSpec("mobilenet_v2", "none")))
    log = MemoryLog()
    method.fit(data, recipe=Recipe(epochs=1, batch_size=4, input_size=32, seed=2, progress=False, prefetch=0,
                                   sam_rho=0.05), device=torch.device("cpu"), log=log)
    assert log.series("train/loss") and all(torch.isfinite(torch.tensor(log.series("train/loss"))))

    def job(**sets):
        protocol = load_protocol("synth5", {"seeds": "[0]", "sources": '["synth5/studio"]', **sets})
        (only,) = expand(protocol, ["erm"], plan_from(protocol, None, {}))
        return only

    plain, sharp = job(), job(**{"recipe.sam_rho": "0.05"})
    assert plain.hash != sharp.hash and "sam_rho" not in plain.identity["recipe"]
    assert fusion_key(plain) is not None and fusion_key(sharp) is None
    with pytest.raises(BenchmarkError, match="positive for recipe.sam_adaptive"):
        Recipe(sam_adaptive=True)
