"""The fine-tuning recipe options (benchmark.training.extensions.finetune): off by default with every job hash as
it was; AdamW, warmup + cosine per step, a backbone rate, no decay on norms/biases/embeddings, gradient
clipping and activation checkpointing, for any method through the shared loop."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from benchmark.core.errors import BenchmarkError
from benchmark.models.backbones import BackboneSpec
from benchmark.training.extensions import finetune
from benchmark.training.method import Components, MemoryLog
from benchmark.training.optimization import clip_gradients, optimizer_for
from benchmark.training.plugins import build_method
from benchmark.training.recipe import Recipe

from .test_backbones import register_tiny_models

register_tiny_models()
VIT = BackboneSpec("timm:test_vit_micro", "none")


def split(method, recipe):
    settings = method.optimizer_settings()
    return finetune.split_groups(method.param_groups(), method.model, settings.lr, settings.weight_decay,
                                 recipe.backbone_lr_scale, recipe.no_decay_norms)


def tuned_optimizer(method, recipe, total_steps):
    """The optimiser as the loop builds it under the recipe's fine-tuning options."""
    settings = finetune.FineTuning(recipe).optimizer_settings(None, method.optimizer_settings())
    return optimizer_for(split(method, recipe), settings, recipe.adam_impl, torch.device("cpu"), recipe.epochs,
                         total_steps)


def built(name: str, spec: BackboneSpec = VIT, **hparams):
    method = build_method(name, hparams, Components(spec))
    method.build(torch.device("cpu"), 32)
    return method


def test_groups_split_by_backbone_and_decay_keep_each_groups_rate():
    method = built("rul", lr=1e-3, weight_decay=0.05)  # RUL: its classifier at 10x the rate
    recipe = Recipe(backbone_lr_scale=0.1, no_decay_norms=True)
    groups = split(method, recipe)
    names = {id(p): n for n, p in method.model.named_parameters()}
    by_name = {names[id(p)]: (g["lr"], g["weight_decay"]) for g in groups for p in g["params"]}
    assert len(by_name) == len(list(method.model.parameters()))  # every parameter once
    assert by_name["backbone.net.blocks.0.attn.qkv.weight"] == pytest.approx((1e-4, 0.05))
    for name in ("backbone.net.pos_embed", "backbone.net.cls_token", "backbone.net.norm.weight",
                 "backbone.net.blocks.0.attn.qkv.bias"):
        assert by_name[name] == pytest.approx((1e-4, 0.0)), name
    assert by_name["fc.weight"] == pytest.approx((1e-2, 0.05)) and by_name["fc.bias"] == pytest.approx((1e-2, 0.0))
    assert by_name["mu.3.weight"] == pytest.approx((1e-3, 0.05))
    unchanged = split(method, Recipe())
    assert unchanged == method.param_groups()


def test_adamw_and_warmup_cosine_replace_the_methods_own():
    method = built("erm", lr=1e-3, weight_decay=0.05)
    recipe = Recipe(optimizer="adamw", schedule="warmup_cosine", warmup_steps=4)
    optimizer, scheduler = tuned_optimizer(method, recipe, total_steps=20)
    assert type(optimizer) is torch.optim.AdamW and optimizer.param_groups[0]["weight_decay"] == 0.05
    rates = []
    for _ in range(20):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    expected = [1e-3 * (k + 1) / 4 for k in range(4)] + [1e-3 * 0.5 * (1 + math.cos(math.pi * (k - 4) / 16))
                                                         for k in range(4, 20)]
    assert rates == pytest.approx(expected)
    with pytest.raises(BenchmarkError, match="warmup_steps = 20: must be fewer than the job's 20 steps"):
        tuned_optimizer(method, dataclasses.replace(recipe, warmup_steps=20), total_steps=20)


def test_adamw_replaces_adam_only():
    from benchmark.training.method import OptimizerSettings

    with pytest.raises(BenchmarkError, match="trains with sgd"):
        finetune.FineTuning(Recipe(optimizer="adamw")).optimizer_settings(None, OptimizerSettings(0.1, 0, 1, "sgd"))


def test_gradients_are_clipped_to_the_norm():
    method = built("erm")
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    torch.nn.functional.cross_entropy(method.logits(x, None, None), y).mul(1e4).backward()
    optimizer = torch.optim.SGD(method.model.parameters(), lr=0.1)
    clip_gradients(optimizer, Recipe(grad_clip_norm=0.5).grad_clip_norm)
    norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in method.model.parameters() if p.grad is not None]))
    assert norm == pytest.approx(0.5, rel=1e-4)


@pytest.fixture(scope="module")
def tiny_split():
    from benchmark.data import DATASETS, decode_split

    return decode_split(DATASETS.get("synth5/studio").load(None, "test", scale=0.02), 32)


def trained_state(tiny_split, **recipe_fields) -> dict[str, torch.Tensor]:
    method = build_method("erm", {}, Components(VIT))
    recipe = Recipe(epochs=2, batch_size=4, input_size=32, seed=3, progress=False, prefetch=0, **recipe_fields)
    method.fit(tiny_split, recipe=recipe, device=torch.device("cpu"), log=MemoryLog())
    return {k: v.clone() for k, v in method.model.state_dict().items()}


def test_activation_checkpointing_changes_no_number(tiny_split):
    """Why it is left out of the job hash: the same weights, bitwise, on this CPU."""
    plain = trained_state(tiny_split)
    checkpointed = trained_state(tiny_split, grad_checkpointing=True)
    assert all(torch.equal(plain[k], checkpointed[k]) for k in plain)
    tuned = trained_state(tiny_split, optimizer="adamw", schedule="warmup_cosine", warmup_steps=2,
                          backbone_lr_scale=0.5, no_decay_norms=True, grad_clip_norm=1.0)
    assert any(not torch.equal(plain[k], tuned[k]) for k in plain)
    assert all(torch.isfinite(v).all() for v in tuned.values() if v.is_floating_point())


def test_options_enter_the_job_hash_only_when_set_and_refuse_what_cannot_run():
    from benchmark.jobs.fusion import fusion_key
    from benchmark.jobs.plan import expand, plan_from
    from benchmark.jobs.protocol import load_protocol

    def job(**sets):
        protocol = load_protocol("synth5", {"seeds": "[0]", "sources": '["synth5/studio"]', **sets})
        (only,) = expand(protocol, ["erm"], plan_from(protocol, None, {}))
        return only

    plain = job()
    assert job(**{"recipe.grad_checkpointing": "true", "backbones": '["timm:test_vit_micro:none"]'}).hash == \
        job(**{"backbones": '["timm:test_vit_micro:none"]'}).hash
    tuned = job(**{"recipe.optimizer": '"adamw"'})
    assert tuned.hash != plain.hash and tuned.identity["recipe"]["optimizer"] == "adamw"
    assert "optimizer" not in plain.identity["recipe"]
    assert fusion_key(plain) is not None and fusion_key(tuned) is None  # tuned jobs train alone
    with pytest.raises(BenchmarkError, match="grad_checkpointing: backbone mobilenet_v2:imagenet offers none"):
        job(**{"recipe.grad_checkpointing": "true"})
    with pytest.raises(BenchmarkError, match="grad_checkpointing: backbone mobilenet_v2:imagenet offers none"):
        job(**{"method_recipe.erm.grad_checkpointing": "true"})  # a method's own recipe is checked too
    with pytest.raises(BenchmarkError, match="recipe.schedule = 'cosine'"):
        job(**{"recipe.schedule": '"cosine"'})
