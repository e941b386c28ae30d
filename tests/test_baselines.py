"""SCN, EAC, RUL, clip_probe and clip_zeroshot: each mechanism on hand-made tensors, then short
real training runs on a synth5 domain."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from benchmark.models.backbones import BackboneSpec
from benchmark.models.encoders import EncoderSpec
from benchmark.training.recipe import Recipe
from benchmark.training.method import Batch, Components, MemoryLog
from benchmark.training.plugins import build_method
from benchmark.models.clip_text import NotApplicable, class_embeddings
from methods.eac import attention_maps, consistency_loss
from methods.rul import mix, mixing_weights
from methods.scn import rank_regularisation, relabel

from .conftest import SIZE

# ------------------------------------------------------------------------------------------ SCN


def test_scn_rank_regularisation_value():
    alpha = torch.tensor([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.0])
    # high = top int(10 * 0.7) = 7: mean 0.6; low: mean 0.1; gap 0.5
    assert rank_regularisation(alpha, 0.7, 0.15).item() == pytest.approx(0.0)
    assert rank_regularisation(alpha, 0.7, 0.6).item() == pytest.approx(0.1)
    assert rank_regularisation(torch.full((10,), 0.5), 0.7, 0.15).item() == pytest.approx(0.15)


def test_scn_relabel_rule_code_and_paper():
    logits = torch.log(torch.tensor([[0.7, 0.2, 0.1], [0.5, 0.4, 0.1], [0.1, 0.1, 0.8], [0.6, 0.3, 0.1]]))
    labels = torch.tensor([1, 1, 2, 2])  # gaps p_max - p_label: 0.5, 0.1, 0.0, 0.5
    alpha = torch.tensor([0.9, 0.8, 0.7, 0.1])  # sample 3 is the low-importance one (beta = 0.7)
    assert relabel(logits, labels, alpha, 0.2, 0.7, "code").tolist() == [True, False, False, True]
    assert relabel(logits, labels, alpha, 0.2, 0.7, "paper").tolist() == [False, False, False, True]


def test_scn_returns_its_relabels_from_its_relabel_epoch_on(components):
    method = build_method("scn", {"relabel_epoch": 2}, components)
    method._last = (torch.log(torch.tensor([[0.1, 0.9], [0.9, 0.1]])), torch.tensor([0, 0]), torch.tensor([0.5, 0.5]))
    batch = Batch(torch.zeros(2, 3, 8, 8), torch.tensor([0, 0]), np.array([2, 3]))
    assert method.after_step(batch, epoch=1) is None  # before relabel_epoch: nothing
    change = method.after_step(batch, epoch=2)
    assert change.rows.tolist() == [2] and change.labels.tolist() == [1]  # sample 3's argmax is its label
    assert method.epoch_metrics() == {"train/relabelled": 1.0}


# ------------------------------------------------------------------------------------------ EAC


def test_eac_consistency_zero_for_symmetric_maps_positive_otherwise():
    fc = torch.randn(7, 4)
    half = torch.randn(2, 4, 5, 3)
    symmetric = torch.cat([half, torch.randn(2, 4, 5, 1), half.flip(-1)], dim=-1)  # width 7, mirror-symmetric
    maps = attention_maps(symmetric, fc)
    assert maps.shape == (2, 7, 5, 7)
    # The flipped view of a symmetric image has the same (symmetric) feature map.
    assert consistency_loss(maps, attention_maps(symmetric.flip(-1), fc)).item() == pytest.approx(0.0, abs=1e-12)
    asymmetric = torch.randn(2, 4, 5, 7)
    assert consistency_loss(attention_maps(asymmetric, fc), attention_maps(asymmetric, fc)).item() > 0.01


def test_eac_maps_detach_the_fc_weights():
    fc = nn.Linear(4, 7)
    feat = torch.randn(1, 4, 3, 3, requires_grad=True)
    consistency_loss(attention_maps(feat, fc.weight), attention_maps(feat * 2, fc.weight)).backward()
    assert fc.weight.grad is None and feat.grad is not None


# ------------------------------------------------------------------------------------------ RUL


def test_rul_mixing_weights_follow_relative_uncertainty():
    logvar = torch.log(torch.tensor([[1.0, 1.0], [3.0, 3.0]]))
    perm = torch.tensor([1, 0])
    assert mixing_weights(logvar, perm).tolist() == pytest.approx([0.25, 0.75])
    mu = torch.tensor([[4.0, 0.0], [0.0, 4.0]])
    # z_0 = 0.25 mu_0 + 0.75 mu_1, z_1 = 0.75 mu_1 + 0.25 mu_0
    assert torch.allclose(mix(mu, logvar, perm), torch.tensor([[1.0, 3.0], [1.0, 3.0]]))


def test_rul_predict_uses_the_mean_branch_without_mixing(studio, components):
    method = build_method("rul", components=components)
    method.build(torch.device("cpu"), SIZE)
    test = studio[1]
    probs = method.predict(test)
    np.testing.assert_allclose(method.predict(test), probs)  # no random mixing at test time
    method.model.eval()
    with torch.no_grad():
        from benchmark.training.augment import normalize

        x = normalize(torch.from_numpy(np.array(test.images[:8])))
        feat = method.model["backbone"].feature_map(x)
        expected = torch.softmax(method.model["fc"](method.model["mu"](feat)), dim=1).numpy()
    np.testing.assert_allclose(probs[:8], expected, atol=1e-5)
    groups = method.param_groups()
    assert groups[1]["lr"] == pytest.approx(10 * method.hparams.lr)


# --------------------------------------------------------------------------------- clip_zeroshot


def test_zeroshot_averages_normalised_prompt_embeddings():
    def tokenize(prompts):
        return torch.tensor([[len(p), p.count("a")] for p in prompts], dtype=torch.float32)

    def encode_text(tokens):
        return tokens * torch.tensor([1.0, 3.0])

    emb = class_embeddings(encode_text, tokenize, ("a photo of a {} face.", "{}"), torch.device("cpu"))
    assert emb.shape == (7, 2) and torch.allclose(emb.norm(dim=1), torch.ones(7))
    # neutral: prompts "a photo of a neutral face." and "neutral"
    prompts = ["a photo of a neutral face.", "neutral"]
    raw = encode_text(tokenize(prompts))
    expected = torch.nn.functional.normalize(torch.nn.functional.normalize(raw, dim=-1).mean(0), dim=0)
    assert torch.allclose(emb[6], expected)


def test_zeroshot_is_not_applicable_without_a_text_tower(components):
    with pytest.raises(NotApplicable, match="no text tower"):
        build_method("clip_zeroshot", components=components)


def test_zeroshot_runs_with_an_open_clip_model(studio, tmp_path):
    import json

    import open_clip

    from benchmark.models.encoders import build_encoder
    from benchmark.training.features import FeatureCache

    from .test_weights import TINY_CLIP

    config = tmp_path / "tiny-zs-clip.json"
    config.write_text(json.dumps({**TINY_CLIP, "vision_cfg": {**TINY_CLIP["vision_cfg"], "image_size": SIZE}}))
    open_clip.add_model_config(config)
    encoder = build_encoder(EncoderSpec("openclip:tiny-zs-clip:random"))
    method = build_method("clip_zeroshot", components=Components(BackboneSpec("resnet18", "none"), encoder,
                                                                 FeatureCache(tmp_path / "f")))
    method.fit(studio[0], recipe=Recipe(progress=False), device=torch.device("cpu"), log=MemoryLog())
    probs = method.predict(studio[1])
    assert probs.shape == (len(studio[1]), 7) and np.allclose(probs.sum(1), 1, atol=1e-5)


# ------------------------------------------------------------------------------ short training


RECIPE = Recipe(epochs=4, batch_size=32, input_size=SIZE, seed=7, progress=False)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["scn", "eac", "rul"])
def test_baselines_train_lower_loss_and_beat_chance(name, studio, components):
    train, test = studio
    overrides = {"lr": 2e-3, **({"relabel_epoch": 3} if name == "scn" else {})}
    method = build_method(name, overrides, components)
    log = MemoryLog()
    method.fit(train, recipe=RECIPE, device=torch.device("cpu"), log=log)
    losses = log.series("train/loss")
    assert losses[-1] < losses[0]
    accuracy = float((method.predict(test).argmax(1) == test.labels).mean())
    majority = np.bincount(test.labels).max() / len(test)
    assert accuracy > majority + 0.1, f"{name}: accuracy {accuracy:.3f}, majority class {majority:.3f}"
    if name == "scn":
        assert len(log.series("train/relabelled")) == RECIPE.epochs
        assert sum(log.series("train/relabelled")) > 0  # the loop applied SCN's Relabels
        assert np.array_equal(np.load(train.path / "labels.npy"), train.labels)  # the cache is untouched


def test_clip_probe_beats_chance(studio, components):
    train, test = studio
    method = build_method("clip_probe", components=components)
    method.fit(train, recipe=RECIPE, device=torch.device("cpu"), log=MemoryLog())
    probs = method.predict(test)
    accuracy = float((probs.argmax(1) == test.labels).mean())
    assert accuracy > np.bincount(test.labels).max() / len(test) + 0.1
    clone = build_method("clip_probe", components=components)
    clone.load_state_dict(method.state_dict())
    np.testing.assert_allclose(clone.predict(test), probs)


# ------------------------------------------------------------------------ the authors' recipes


def test_rul_build_leaves_the_pretrained_batchnorm_statistics_alone():
    from benchmark.models.backbones import build_backbone

    spec = BackboneSpec("mobilenet_v2", "imagenet")
    reference = {k: v.clone() for k, v in build_backbone(spec).state_dict().items() if "running" in k}
    method = build_method("rul", components=Components(spec))
    method.build(torch.device("cpu"), SIZE)
    built = {k.removeprefix("backbone."): v for k, v in method.model.state_dict().items() if "running" in k}
    assert reference and all(torch.equal(built[k], v) for k, v in reference.items())


@pytest.mark.parametrize("name", ["scn", "rul"])
def test_scn_and_rul_flip_or_noise_never_both_as_their_authors_code(name):
    import dataclasses

    from benchmark.training.augment import augment, normalize
    from benchmark.training.plugins import method_entry

    spec = dataclasses.replace(method_entry(name).cls.augment_spec, erase_p=0.0)  # erasing measured elsewhere
    n = 4000
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 200, (n, 8, 8, 3), generator=gen, dtype=torch.uint8)
    out, flips = augment(images, spec, torch.Generator().manual_seed(1), return_flips=True)
    clean = normalize(images)
    unflipped = torch.where(flips[:, None, None, None], out.flip(-1), out)
    noised = (unflipped - clean).abs().flatten(1).amax(1) > 1e-4
    assert abs(flips.float().mean().item() - 0.25) < 0.025
    assert abs(noised.float().mean().item() - 0.25) < 0.025
    assert not (flips & noised).any()


def test_a_method_fix_changes_its_jobs_hash_and_no_other():
    from benchmark.jobs.plan import DataPlan, expand
    from benchmark.jobs.protocol import load_protocol

    protocol = load_protocol("synth5")
    jobs = {j.method: j for j in expand(protocol, ["erm", "scn", "rul"], DataPlan(options=protocol.dataset_options))}
    assert jobs["scn"].identity["method_version"] == 2 and jobs["rul"].identity["method_version"] == 2
    assert "method_version" not in jobs["erm"].identity
