"""WiSE-FT (methods/wise_ft.py) on a tiny random open_clip model: alpha 0 is the zero-shot model
and alpha 1 the fine-tuned one; `_merge`, `ClassificationHead` and `cosine_lr` against
transcriptions of wise-ft's; every alpha evaluated once, the reported one last."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from benchmark.training.method import MemoryLog
from benchmark.training.plugins import build_method
from benchmark.training.recipe import Recipe

from methods.wise_ft import ClassificationHead, merge

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def components(clip_components):
    return clip_components


@pytest.fixture(scope="module")
def data(studio_val32):
    return studio_val32


@pytest.fixture(scope="module")
def trained(components, data):
    method = build_method("wise_ft", {"warmup_steps": 1, "lr": 1e-3, "alphas": (0.0, 0.5, 1.0)}, components)
    log, evaluated = MemoryLog(), []

    def epoch_end(step):
        evaluated.append((step, method.predict(data)))
        return {"test/synth5__studio/acc": 0.5, "test/synth5__film/acc": 0.25}

    method.fit(data, recipe=Recipe(epochs=2, batch_size=16, input_size=32, seed=0, progress=False, prefetch=0),
               device=CPU, log=log, epoch_end=epoch_end)
    return method, log, evaluated


def test_alpha_zero_is_zero_shot_and_one_is_fine_tuned(components, data, trained):
    from benchmark.models.clip_text import zero_shot_weights

    method, log, evaluated = trained
    by_alpha = dict(zip(log.series("wise_ft/alpha"), (p for s, p in evaluated if s > 2)))
    f = F.normalize(components.features.get(components.encoder, data, CPU, policy="clip"), dim=-1)
    scale = components.encoder.clip_model.logit_scale.exp()
    zero_shot = torch.softmax(scale * f @ zero_shot_weights(components.encoder, method.hparams.templates, CPU).T, 1)
    assert np.allclose(by_alpha[0.0], zero_shot.numpy(), atol=1e-5)
    fine_tuned = dict(evaluated)[2]  # the last epoch's evaluation, before any merge
    assert np.array_equal(by_alpha[1.0], fine_tuned) and not np.allclose(by_alpha[0.0], fine_tuned, atol=1e-3)


def test_every_alpha_once_the_reported_one_last_and_its_figure(trained):
    method, log, evaluated = trained
    assert log.series("wise_ft/alpha") == [0.0, 1.0, 0.5]
    assert [s for s, _ in evaluated] == [1, 2, 3, 4, 5]
    assert "wise_ft_alphas.png" in log.figures
    state = merge(method.zero_shot_state, {k: v for k, v in method.model.state_dict().items()}, 1.0)
    assert all(torch.equal(state[k], v) for k, v in method.model.state_dict().items())  # the model is alpha 0.5's


def upstream_merge(theta_0, theta_1, alpha):
    """wise_ft.py's _merge, transcribed."""
    return {key: (1 - alpha) * theta_0[key] + alpha * theta_1[key] for key in theta_0.keys()}


def test_merge_equals_upstream_including_an_integer_buffer():
    theta_0 = {"w": torch.tensor([1.0, 2.0], dtype=torch.float64), "n": torch.tensor(3)}
    theta_1 = {"w": torch.tensor([3.0, -2.0], dtype=torch.float64), "n": torch.tensor(8)}
    for alpha in (0.0, 0.5, 1.0):
        ours, theirs = merge(theta_0, theta_1, alpha), upstream_merge(theta_0, theta_1, alpha)
        assert torch.equal(ours["w"], theirs["w"])
        assert ours["n"].dtype == torch.int64 and int(ours["n"]) == int(theirs["n"])  # truncated on load


def test_head_normalises_its_input_and_folds_the_scale():
    weights = torch.randn(7, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    head = ClassificationHead(weights).double()
    x = torch.randn(3, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(head(x), (x / x.norm(dim=-1, keepdim=True)) @ weights.T)
    assert head.bias.requires_grad and torch.equal(head.bias, torch.zeros(7, dtype=torch.float64))


def test_per_step_warmup_cosine_equals_cosine_lr():
    from benchmark.training.optimization import warmup_cosine

    def cosine_lr(step, base, warmup, steps):  # wise-ft src/models/utils.py, transcribed
        if step < warmup:
            return base * (step + 1) / warmup
        e = step - warmup
        es = steps - warmup
        return 0.5 * (1 + math.cos(math.pi * e / es)) * base

    base, warmup, total = 3e-5, 5, 20
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=base)
    schedule = warmup_cosine(optimizer, warmup, total)
    for step in range(total):
        assert optimizer.param_groups[0]["lr"] == pytest.approx(cosine_lr(step, base, warmup, total), rel=1e-12)
        optimizer.step()
        schedule.step()


def test_one_step_equals_wise_ft_finetune_in_float64(components):
    """One step of `finetune` transcribed (AdamW on every parameter, cosine_lr at step 0, clip to
    norm 1) against the shared loop's optimiser, schedule and clipping for the method's settings."""
    import copy

    from benchmark.training.optimization import clip_gradients, optimizer_for

    method = build_method("wise_ft", {"warmup_steps": 2}, components)
    method.build(CPU, 32)
    method.model.double()
    reference = copy.deepcopy(method.model)
    x = torch.randn(4, 3, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([0, 1, 2, 3])
    settings = method.optimizer_settings()
    optimizer, schedule = optimizer_for(method.param_groups(), settings, "auto", CPU, 1, 10)
    ours_loss = F.cross_entropy(method.forward(x), y)
    ours_loss.backward()
    clip_gradients(optimizer, settings.grad_clip_norm)
    optimizer.step()
    params = [p for p in reference.parameters() if p.requires_grad]
    upstream = torch.optim.AdamW(params, lr=settings.lr, weight_decay=settings.weight_decay)
    for group in upstream.param_groups:  # cosine_lr at step 0 sets the rate before the forward
        group["lr"] = settings.lr * 1 / settings.warmup_steps
    theirs_loss = F.cross_entropy(reference["head"](reference["visual"](x)), y)
    theirs_loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    upstream.step()
    assert float((ours_loss - theirs_loss).detach().abs()) < 1e-12
    diff = max(float((a - b).detach().abs().max()) for a, b in zip(method.model.parameters(), reference.parameters()))
    assert diff < 1e-12
