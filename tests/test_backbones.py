"""Backbones from every family (torchvision, timm, open_clip) behind one contract: the pooled
feature is the library's own forward, bitwise; the map is what the pool averages (stated
exceptions aside); EAC's class activation maps are those of its logits; weights load strictly
from a file whose digest enters the job; every trainable method takes a step on every family.

timm and open_clip models at random initialisation and small sizes: timm's ResNet-10-T,
ConvNeXt-Atto and EfficientNet-B0 as they are, and a 32 px ViT and a 32 px CLIP registered here.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from benchmark.core.errors import BenchmarkError
from benchmark.models.backbones import Backbone, BackboneSpec, backbone_weights_digest, build_backbone
from benchmark.models.weights import WeightsError, file_digest
from benchmark.training.method import Components
from benchmark.training.plugins import build_method


def register_tiny_models() -> None:
    """A 32 px ViT in timm's registry and a 32 px CLIP among open_clip's configurations."""
    import timm
    from open_clip.factory import _MODEL_CONFIGS
    from timm.models import register_model
    from timm.models.vision_transformer import VisionTransformer

    if not timm.is_model("test_vit_micro"):
        @register_model
        def test_vit_micro(pretrained=False, **kwargs):
            kwargs = {k: v for k, v in kwargs.items() if not k.startswith("pretrained_cfg") and k != "cache_dir"}
            return VisionTransformer(**{"img_size": 32, "patch_size": 8, "embed_dim": 96, "depth": 2, "num_heads": 2,
                                        **kwargs})
    _MODEL_CONFIGS.setdefault("test-clip-micro", {
        "embed_dim": 96, "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "patch_size": 8, "head_width": 16},
        "text_cfg": {"context_length": 16, "vocab_size": 100, "width": 16, "heads": 2, "layers": 1}})


register_tiny_models()

FAMILIES = {
    "torchvision": BackboneSpec("mobilenet_v2", "imagenet"),
    "timm-resnet": BackboneSpec("timm:resnet10t", "none"),
    "timm-convnext": BackboneSpec("timm:convnext_atto", "none"),
    "timm-efficientnet": BackboneSpec("timm:efficientnet_b0", "none"),
    "timm-vit": BackboneSpec("timm:test_vit_micro", "none"),
    "openclip-vit": BackboneSpec("openclip:test-clip-micro", "none"),
}
# Families whose pooled feature is not the map's mean: ConvNeXt normalises after pooling.
POOL_NOT_MAP_MEAN = {"timm-convnext"}


def seeded(shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module", params=list(FAMILIES), ids=list(FAMILIES))
def family(request):
    torch.manual_seed(0)
    return request.param, build_backbone(FAMILIES[request.param]).eval()


def library_reference(name: str, backbone) -> torch.nn.Module:
    """The library's own model on the same weights, configured as the contract says."""
    if name.startswith("timm"):
        import timm

        model_name = backbone.spec.name.removeprefix("timm:")
        kwargs = {"global_pool": "avg", "fc_norm": False} if name == "timm-vit" else {}
        model = timm.create_model(model_name, pretrained=False, num_classes=0, **kwargs)
        model.load_state_dict(backbone.net.state_dict())
        return model.eval()
    import open_clip

    model = open_clip.create_model(backbone.spec.name.removeprefix("openclip:"), pretrained=None)
    model.visual.load_state_dict(backbone.visual.state_dict())
    model.visual.pool_type = "avg"
    return model.eval()


@pytest.mark.parametrize("size", [48, 32])
def test_pooled_feature_is_the_librarys_own_forward_bitwise(family, size):
    name, backbone = family
    if name == "torchvision":
        pytest.skip("torchvision's own models end in their classifier; the paper's GAP feature is the contract")
    x = backbone.fit_input(seeded((2, 3, size, size)))
    reference = library_reference(name, backbone)
    with torch.no_grad():
        expected = reference.encode_image(x) if name.startswith("openclip") else reference(x)
        assert torch.equal(backbone(x), expected)


def test_the_map_is_what_the_pool_averages(family):
    name, backbone = family
    x = seeded((2, 3, 48, 48), 1)
    with torch.no_grad():
        fmap, pooled = backbone.feature_map(x), backbone(x)
    assert fmap.ndim == 4 and fmap.shape[:2] == (2, backbone.dim) and pooled.shape == (2, backbone.dim)
    if backbone.input_size is not None:  # a fixed grid: the input was resized to the model's size
        assert fmap.shape[2] * fmap.shape[3] < backbone.input_size ** 2
    close = torch.allclose(fmap.mean(dim=(2, 3)), pooled, rtol=1e-4, atol=1e-5)
    assert close == (name not in POOL_NOT_MAP_MEAN)


def test_vit_maps_leave_the_class_token_out():
    backbone = build_backbone(FAMILIES["timm-vit"]).eval()
    x = seeded((1, 3, 32, 32), 2)
    with torch.no_grad():
        tokens = backbone.net.forward_features(x)
        fmap = backbone.feature_map(x)
    assert tokens.shape[1] == 1 + 16 and fmap.shape == (1, 96, 4, 4)
    assert torch.equal(fmap.flatten(2).transpose(1, 2), tokens[:, 1:])  # row-major patch grid


@pytest.fixture(scope="module")
def encoder():
    from benchmark.models.encoders import EncoderSpec, build_encoder

    return build_encoder(EncoderSpec("torchvision:mobilenet_v2:imagenet"))


def test_eac_class_activation_maps_are_those_of_its_logits(family, encoder):
    """The CAM of each class, averaged over the map, plus the FC bias, is EAC's logit."""
    from methods.eac import attention_maps

    name, _ = family
    method = build_method("eac", {}, Components(FAMILIES[name], encoder))
    method.build(torch.device("cpu"), 48)
    method.model.eval()
    x = seeded((2, 3, 48, 48), 3)
    with torch.no_grad():
        cams = attention_maps(method.model["backbone"].feature_map(x), method.model["fc"].weight)
        logits = method.logits(x, np.arange(2), None)
    assert torch.allclose(cams.mean(dim=(2, 3)) + method.model["fc"].bias, logits, rtol=1e-4, atol=1e-5)


@pytest.fixture(scope="module")
def mae_encoder(tmp_path_factory):
    from benchmark.models.encoders import EncoderSpec, build_encoder

    from .mae_checkpoint import write_mae_checkpoint

    path = write_mae_checkpoint(tmp_path_factory.mktemp("mae") / "mae_visualize_vit_large.pth")
    return build_encoder(EncoderSpec("mae:vit_large_patch16:visualize", path=str(path)))


TRAINABLE = ["erm", "scn", "eac", "rul", "cafe", "clip_ft", "ofer"]


@pytest.fixture(scope="module")
def tiny_split():
    """Ten synth5/studio images at 48 px, the same ten for training and testing."""
    from benchmark.data import DATASETS, decode_split

    return decode_split(DATASETS.get("synth5/studio").load(None, "test", scale=0.02), 48)


STEP_FAMILIES = ["torchvision", "timm-convnext", "timm-vit", "openclip-vit"]  # a CNN and a ViT of each library


@pytest.mark.slow
@pytest.mark.parametrize("method_name", TRAINABLE)
@pytest.mark.parametrize("name", STEP_FAMILIES)
def test_every_trainable_method_takes_a_step_on_every_family(name, method_name, encoder, mae_encoder, tiny_split):
    """Three steps of the shared loop (batches of 4, 4 and 2), then a prediction."""
    from benchmark.training.method import MemoryLog
    from benchmark.training.recipe import Recipe

    hparams = {"latent_layers": [64, 48, 32, 16]} if method_name == "ofer" else {}
    components = Components(FAMILIES[name], mae_encoder if method_name == "ofer" else encoder)
    method = build_method(method_name, hparams, components)
    recipe = Recipe(epochs=1, batch_size=4, input_size=48, seed=1, progress=False, prefetch=0)
    initial: dict[str, torch.Tensor] = {}
    new_backbone = method.new_backbone

    def recorded_backbone():
        backbone = new_backbone()
        initial.update({k: v.clone() for k, v in backbone.state_dict().items()})
        return backbone

    method.new_backbone = recorded_backbone
    log = MemoryLog()
    method.fit(tiny_split, recipe=recipe, device=torch.device("cpu"), log=log)
    assert log.series("train/loss") and np.isfinite(log.series("train/loss")).all()
    trained = next(m for m in method.model.modules() if isinstance(m, Backbone)).state_dict()
    assert any(not torch.equal(initial[k], trained[k]) for k in initial if trained[k].is_floating_point())
    probabilities = method.predict(tiny_split)
    assert probabilities.shape == (len(tiny_split), 7) and np.allclose(probabilities.sum(1), 1, atol=1e-5)


def test_weights_from_a_file_load_strictly_and_their_digest_names_the_job(tmp_path):
    spec = FAMILIES["timm-vit"]
    source = build_backbone(spec)
    path = tmp_path / "vit.pt"
    torch.save(source.net.state_dict(), path)  # without the classifier (reset by the harness)
    loaded = build_backbone(BackboneSpec(spec.name, "file", str(path)))
    assert all(torch.equal(a, b) for a, b in zip(loaded.net.state_dict().values(), source.net.state_dict().values()))
    assert loaded.weights_digest == backbone_weights_digest(BackboneSpec(spec.name, "file", str(path))) == file_digest(str(path))

    import timm

    full = timm.create_model("test_vit_micro")  # with its 1000-way classifier: dropped after loading
    torch.save(full.state_dict(), tmp_path / "full.pt")
    assert build_backbone(BackboneSpec(spec.name, "file", str(tmp_path / "full.pt"))).dim == 96

    state = source.net.state_dict()
    state.pop("blocks.1.mlp.fc2.bias")
    state["extra.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "bad.pt")
    with pytest.raises(WeightsError, match=r"missing blocks\.1\.mlp\.fc2\.bias; unexpected extra\.weight"):
        build_backbone(BackboneSpec(spec.name, "file", str(tmp_path / "bad.pt")))
    with pytest.raises(WeightsError, match=r"absent\.pt: backbone weights file not found"):
        build_backbone(BackboneSpec(spec.name, "file", str(tmp_path / "absent.pt")))
    with pytest.raises(WeightsError, match=r"weights 'file' need a path"):
        build_backbone(BackboneSpec(spec.name, "file"))


def test_pretrained_timm_weights_are_looked_up_offline_and_missing_ones_say_where():
    start = time.time()
    with pytest.raises(WeightsError, match=r"no local copy of timm resnet10t.*(hub cache|checkpoints)"):
        build_backbone(BackboneSpec("timm:resnet10t", "pretrained"))
    assert time.time() - start < 5  # no download attempt


def test_openclip_tower_loads_the_file_the_encoder_uses(tmp_path):
    import open_clip
    from safetensors.torch import save_file

    clip = open_clip.create_model("test-clip-micro", pretrained=None)
    path = tmp_path / "open_clip_model.safetensors"
    save_file({k: v.contiguous() for k, v in clip.state_dict().items()}, str(path))
    backbone = build_backbone(BackboneSpec("openclip:test-clip-micro", "openai", str(path)))
    assert torch.equal(backbone.visual.conv1.weight, clip.visual.conv1.weight)
    assert backbone.weights_digest == file_digest(str(path)) and backbone.dim == 96


@pytest.mark.parametrize("spec,close", [(BackboneSpec("timm:convnext_atoo", "none"), "convnext_atto"),
                                        (BackboneSpec("openclip:ViT-B-3", "none"), "ViT-B-32"),
                                        (BackboneSpec("resnet19", "none"), "timm:<model>")])
def test_unknown_names_fail_fast_naming_close_ones(spec, close):
    start = time.time()
    with pytest.raises(BenchmarkError, match=close):
        backbone_weights_digest(spec)
    assert time.time() - start < 1


def test_a_family_name_is_never_read_as_a_backbone():
    """`--backbones timm:resnet18` once read as torchvision backbone "timm" with weights "resnet18";
    the error now says what was understood and the spelling to use."""
    from benchmark.jobs.protocol import ProtocolError, load_protocol
    from benchmark.models.specs import BackboneSpec, backbone_families

    assert {"torchvision", "timm", "openclip"} <= set(backbone_families())
    for item in ("timm:resnet18", "openclip:ViT-B-32"):
        with pytest.raises(ProtocolError, match=f"reads as the family '{item.split(':')[0]}'.*e.g. {item}:none"):
            load_protocol("synth5", {"backbones": f'["{item}"]'})
    assert BackboneSpec("timm:resnet18", "none").family == "timm" and BackboneSpec("timm:resnet18").model_name == "resnet18"
    assert BackboneSpec("resnet18").family == "torchvision" and BackboneSpec("resnet18").model_name == "resnet18"
