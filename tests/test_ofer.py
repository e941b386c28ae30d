"""OFER (Latent-OFER) against its authors' released code: the MAE latent from a checkpoint in the
official layout, the classifier's forward, loss and one SGD step against a transcription of the
released `OURS` module (same weights), its augmentation rates, and its defaults."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F
from torchvision import models

from benchmark.core.errors import BenchmarkError
from benchmark.models.backbones import BackboneSpec
from benchmark.models.encoders import EncoderSpec, build_encoder, encoder_weights_digest
from benchmark.models.mae import OFER_TOKENS
from benchmark.models.weights import WeightsError
from benchmark.training.augment import AugmentSpec, augment, rotate_and_shift
from benchmark.training.method import Batch, Components
from benchmark.training.plugins import build_method
from benchmark.training.recipe import Recipe
from benchmark.training.optimization import optimizer_for

from .mae_checkpoint import mae_state, reference_decoder_tokens, write_mae_checkpoint

SMALL_LATENT = (64, 48, 32, 16)  # the latent branch's widths in these tests (released: 10000, 5000, 1024, 256)


# -- a transcription of networks/OURS.py (github.com/leeisack/Latent-OFER), widths as arguments ------------

class ReleasedChannelAttention(nn.Module):
    def __init__(self):
        super().__init__()
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.attention = nn.Sequential(nn.Linear(512, 32), nn.BatchNorm1d(32), nn.ReLU(inplace=True),
                                       nn.Linear(32, 512), nn.Sigmoid())

    def forward(self, sa):
        sa2 = self.gap(sa)
        sa2 = sa2.view(sa2.size(0), -1)
        y = self.attention(sa2)
        y = y.unsqueeze(dim=-1)
        y = y.unsqueeze(dim=-1)
        return sa * y


class ReleasedSpatialAttention(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1x1 = nn.Sequential(nn.Conv2d(512, 256, kernel_size=1), nn.BatchNorm2d(256))
        self.conv_3x3 = nn.Sequential(nn.Conv2d(256, 512, kernel_size=3, padding=1), nn.BatchNorm2d(512))
        self.conv_1x3 = nn.Sequential(nn.Conv2d(256, 512, kernel_size=(1, 3), padding=(0, 1)), nn.BatchNorm2d(512))
        self.conv_3x1 = nn.Sequential(nn.Conv2d(256, 512, kernel_size=(3, 1), padding=(1, 0)), nn.BatchNorm2d(512))
        self.relu = nn.ReLU()
        self.gap = nn.AdaptiveAvgPool2d(1)

    def forward(self, x):
        y = self.conv1x1(x)
        a = self.conv_3x3(y)
        b = self.conv_1x3(y)
        c = self.conv_3x1(y)
        y = self.relu(a + b + c)
        y = y.sum(dim=1, keepdim=True)
        out = x * y
        out = self.gap(out)
        return out.view(out.size(0), -1)


class ReleasedCrossAttentionHead(nn.Module):
    def __init__(self):
        super().__init__()
        self.sa = ReleasedSpatialAttention()
        self.ca = ReleasedChannelAttention()

    def forward(self, x):
        return self.sa(self.ca(x))


class ReleasedOURS(nn.Module):
    def __init__(self, latent_dim, widths, num_class=7, num_head=4):
        super().__init__()
        resnet = models.resnet18()
        self.features = nn.Sequential(*list(resnet.children())[:-2])
        self.num_head = num_head
        for i in range(num_head):
            setattr(self, "cat_head%d" % i, ReleasedCrossAttentionHead())
        self.sig = nn.Sigmoid()
        self.hh_layer = nn.Linear(latent_dim, widths[0])
        self.hh_layer2 = nn.Linear(widths[0], widths[1])
        self.hh_batch1 = nn.BatchNorm1d(widths[1])
        self.hh_layer3 = nn.Linear(widths[1], widths[2])
        self.hh_layer4 = nn.Linear(widths[2], widths[3])
        self.batch_norm1 = nn.BatchNorm1d(widths[3])
        self.fc = nn.Linear(512 + widths[3], 256)
        self.fc2 = nn.Linear(256, 128)
        self.batch_norm = nn.BatchNorm1d(128)
        self.fc4 = nn.Linear(128, num_class)
        self.bn = nn.BatchNorm1d(num_class)

    def forward(self, x, latent):
        x = self.features(x)
        heads = []
        for i in range(self.num_head):
            heads.append(getattr(self, "cat_head%d" % i)(x))
        heads = torch.stack(heads).permute([1, 0, 2])
        if heads.size(1) > 1:
            heads = F.log_softmax(heads, dim=1)
            heads = heads.sum(dim=1)
        latent = self.hh_layer(latent)
        latent = self.hh_layer2(latent)
        latent = self.hh_batch1(latent)
        latent = self.hh_layer3(latent)
        latent = self.hh_layer4(latent)
        latent = self.batch_norm1(latent)
        out = torch.cat([heads, latent], dim=1)
        out = self.fc(out)
        out = self.fc2(out)
        out = self.batch_norm(out)
        out = self.fc4(out)
        out = self.bn(out)
        return out, x, heads


# -- fixtures -----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def mae_file(tmp_path_factory):
    return write_mae_checkpoint(tmp_path_factory.mktemp("mae") / "mae_visualize_vit_large.pth")


def ofer_method(mae_file, **hparams):
    encoder = build_encoder(EncoderSpec("mae:vit_large_patch16:visualize", path=str(mae_file)))
    components = Components(BackboneSpec("resnet18", "none"), encoder)
    return build_method("ofer", {"latent_layers": SMALL_LATENT, **hparams}, components)


# -- the latent -------------------------------------------------------------------------------------------

def test_mae_latent_is_the_decoder_tokens_at_the_released_positions(mae_file):
    state = mae_state()
    encoder = build_encoder(EncoderSpec("mae:vit_large_patch16:visualize", path=str(mae_file)))
    x = torch.randn(3, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    tokens = reference_decoder_tokens(state, x, heads=1)  # width 32: one 32-channel head
    expected = tokens[:, list(OFER_TOKENS)].flatten(1)
    got = encoder(x)
    assert got.shape == (3, 78 * 16) and encoder.dim == 78 * 16
    assert (got - expected).abs().max() < 1e-4
    # The released positions: 9 rows of 8 and one of 6 of the 14 x 14 grid, after the class token.
    rows = {(t - 1) // 14 for t in OFER_TOKENS}
    assert len(OFER_TOKENS) == 78 and rows == set(range(3, 13))
    assert all(3 <= (t - 1) % 14 <= 10 for t in OFER_TOKENS)
    # Smaller inputs are resized to the MAE's 224 px first.
    small = F.interpolate(x, size=(64, 64), mode="bilinear", align_corners=False)
    resized = F.interpolate(small, size=(224, 224), mode="bilinear", align_corners=False)
    assert torch.allclose(encoder(small), encoder(resized))


def test_mae_checkpoint_without_decoder_or_absent_fails_fast_and_says_where(tmp_path, monkeypatch):
    pretrain = write_mae_checkpoint(tmp_path / "mae_pretrain_vit_large.pth", decoder=False)
    with pytest.raises(WeightsError, match="visualize"):
        build_encoder(EncoderSpec("mae:vit_large_patch16:visualize", path=str(pretrain)))
    with pytest.raises(BenchmarkError, match="decoder"):
        encoder_weights_digest(EncoderSpec("mae:vit_large_patch16:pretrain"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    start = time.perf_counter()
    with pytest.raises(WeightsError) as err:
        encoder_weights_digest(EncoderSpec("mae:vit_large_patch16:visualize"))
    assert time.perf_counter() - start < 5
    assert "mae_visualize_vit_large.pth" in str(err.value) and str(tmp_path / "torch" / "hub" / "checkpoints") in str(err.value)
    # Found in torch hub's checkpoint folder, as MAE's own demo stores it.
    write_mae_checkpoint(tmp_path / "torch" / "hub" / "checkpoints" / "mae_visualize_vit_large.pth")
    assert encoder_weights_digest(EncoderSpec("mae:vit_large_patch16:visualize")) != "random"


# -- the classifier against the released module -------------------------------------------------------------

def released_with_our_weights(net: nn.Module, latent_dim: int) -> ReleasedOURS:
    released = ReleasedOURS(latent_dim, SMALL_LATENT).to(torch.float64)
    state = {k.replace("backbone.trunk.", "features.", 1): v for k, v in net.state_dict().items()}
    released.load_state_dict(state, strict=True)  # every released parameter and buffer, by its released name
    return released


def test_ofer_forward_loss_and_one_sgd_step_equal_the_released_module(mae_file):
    method = ofer_method(mae_file)
    method.build(torch.device("cpu"), input_size=64)
    net = method.model.to(torch.float64)
    released = released_with_our_weights(net, method.components.encoder.dim)
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(6, 3, 64, 64, generator=gen, dtype=torch.float64)
    latent = torch.randn(6, method.components.encoder.dim, generator=gen, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 3, 4, 6])

    ours, theirs = net(x, latent), released(x, latent)[0]
    assert (ours - theirs).abs().max() < 1e-10
    loss_ours, loss_theirs = F.cross_entropy(ours, y), torch.nn.CrossEntropyLoss()(theirs, y)
    assert abs(loss_ours.item() - loss_theirs.item()) < 1e-12

    optimizer, _ = optimizer_for([{"params": list(net.parameters())}], method.optimizer_settings(), "auto",
                                 torch.device("cpu"), Recipe().epochs)
    reference = torch.optim.SGD(list(released.parameters()), lr=0.1, weight_decay=1e-4, momentum=0.9)
    for opt, loss in ((optimizer, loss_ours), (reference, loss_theirs)):
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = dict(released.named_parameters())
    worst = max((p - after[k.replace("backbone.trunk.", "features.", 1)]).abs().max().item()
                for k, p in net.named_parameters())
    assert worst < 1e-10
    net.eval(), released.eval()  # the running statistics moved alike too
    assert (net(x, latent) - released(x, latent)[0]).abs().max() < 1e-10


def test_ofer_training_step_reads_each_samples_cached_latent(mae_file):
    method = ofer_method(mae_file)
    method.build(torch.device("cpu"), input_size=64)
    latents = torch.randn(10, method.components.encoder.dim, generator=torch.Generator().manual_seed(4))
    method._latents = latents
    x = torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(5))
    index = np.array([7, 2, 9, 0])
    y = torch.tensor([1, 2, 3, 4])
    loss, parts = method.training_step(Batch(x, y, index))
    assert torch.allclose(loss, F.cross_entropy(method.model(x, latents[torch.from_numpy(index)]), y))
    assert set(parts) == {"ce"}
    with pytest.raises(BenchmarkError, match="batch of one"):
        method.training_step(Batch(x[:1], y[:1], index[:1]))


def test_ofer_defaults_are_the_released_ones():
    from methods.ofer import OferHparams, OferNet

    hp = OferHparams()
    settings = hp.optimizer()
    assert (settings.optimizer, settings.lr, settings.momentum, settings.weight_decay) == ("sgd", 0.1, 0.9, 1e-4)
    assert (settings.lr_step, settings.lr_gamma) == (10, 0.1) and hp.num_heads == 4
    with torch.device("meta"):  # the released sizes, without allocating 1.6 GB
        from benchmark.models.torchvision_backbones import TorchvisionBackbone

        trunk = nn.Sequential(*list(models.resnet18().children())[:-2])
        net = OferNet(TorchvisionBackbone(trunk, 512, BackboneSpec("resnet18", "none"), "none"), 78 * 512, hp.num_heads,
                      hp.latent_layers)
    shapes = [tuple(m.weight.shape) for m in (net.hh_layer, net.hh_layer2, net.hh_layer3, net.hh_layer4, net.fc,
                                              net.fc2, net.fc4)]
    assert shapes == [(10000, 39936), (5000, 10000), (1024, 5000), (256, 1024), (256, 768), (128, 256), (7, 128)]
    # StepLR(10, 0.1): the rate drops tenfold after epochs 10, 20, ...
    param = nn.Parameter(torch.zeros(1))
    optimizer, scheduler = optimizer_for([{"params": [param]}], settings, "auto", torch.device("cpu"), Recipe().epochs)
    rates = []
    for _ in range(25):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert rates[0] == rates[9] == 0.1 and abs(rates[10] - 0.01) < 1e-12 and abs(rates[20] - 0.001) < 1e-12


# -- augmentation ----------------------------------------------------------------------------------------------

def test_ofer_augmentation_rates_are_the_released_ones():
    from methods.ofer import Ofer

    spec = Ofer.augment_spec
    assert spec.noise_p == 0 and spec.flip_p == 0.5 and spec.erase_p == 0.5 and spec.affine_p == 0.2
    n = 4000
    images = torch.randint(0, 256, (n, 32, 32, 3), generator=torch.Generator().manual_seed(6)).to(torch.uint8)
    plain = augment(images, AugmentSpec(noise_p=0, flip_p=0, erase_p=0), torch.Generator().manual_seed(0))
    only = {"affine": AugmentSpec(noise_p=0, flip_p=0, erase_p=0, affine_p=spec.affine_p),
            "erase": AugmentSpec(noise_p=0, flip_p=0, erase_p=spec.erase_p)}
    for name, one in only.items():
        changed = (augment(images, one, torch.Generator().manual_seed(7)) != plain).flatten(1).any(1).float().mean()
        expected = spec.affine_p if name == "affine" else spec.erase_p
        assert abs(changed.item() - expected) < 0.025, (name, changed.item())  # 3.5 standard errors at n = 4000
    _, flips = augment(images, spec, torch.Generator().manual_seed(8), return_flips=True)
    assert abs(flips.float().mean().item() - 0.5) < 0.03


@pytest.mark.parametrize("angle, shift", [(0.0, (0, 0)), (15.0, (0, 0)), (-20.0, (5, -3)), (0.0, (-8, 8))])
def test_rotate_and_shift_is_torchvisions_rotation_then_padded_crop(angle, shift, monkeypatch):
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as TF

    image = torch.randint(1, 256, (1, 3, 48, 48), generator=torch.Generator().manual_seed(9)).float()
    pad = 8
    rotated = TF.rotate(image, angle, interpolation=InterpolationMode.NEAREST, fill=0)
    dy, dx = shift
    expected = TF.crop(TF.pad(rotated, [pad]), pad + dy, pad + dx, 48, 48)  # RandomCrop's corner (pad+dy, pad+dx)

    draws = iter([torch.tensor([(angle / 20.0 + 1) / 2]), torch.tensor([(dy + pad + 0.5) / (2 * pad + 1)]),
                  torch.tensor([(dx + pad + 0.5) / (2 * pad + 1)])])  # the uniform draws giving this angle and shift
    monkeypatch.setattr("benchmark.training.augment._rand", lambda shape, gen, device: next(draws))
    got = rotate_and_shift(image, torch.tensor([True]), torch.Generator(), 20.0, pad)
    # Pixel for pixel (measured: all equal here); a tie in nearest rounding may flip one elsewhere.
    agree = (got == expected).all(dim=1).float().mean().item()
    assert agree > 0.995, agree


# -- through the runner --------------------------------------------------------------------------------------

@pytest.mark.slow
def test_ofer_job_runs_with_its_own_encoder_and_batch_and_its_checkpoint_in_the_hash(tmp_path, mae_file):
    from benchmark.cli import main
    from benchmark.jobs.plan import expand, plan_from
    from benchmark.jobs.protocol import load_protocol
    from benchmark.store import open_store

    from .test_runner import write_protocol

    protocol = write_protocol(tmp_path)
    protocol.write_text(protocol.read_text().replace('methods = ["erm", "clip_ft"]', 'methods = ["ofer", "erm"]')
                        + "\n[method_recipe.ofer]\nbatch_size = 8\n"
                        + f'\n[encoders.ofer]\npath = "{mae_file}"\n'
                        + '\n[hparams.ofer]\nlatent_layers = [64, 48, 32, 16]\nlr = 0.01\n')
    loaded = load_protocol(str(protocol))
    jobs = expand(loaded, ["ofer", "erm"], plan_from(loaded, None, {}))
    ofer = [j for j in jobs if j.method == "ofer"]
    erm = [j for j in jobs if j.method == "erm"]
    assert ofer[0].encoder.id == "mae:vit_large_patch16:visualize" and ofer[0].recipe.batch_size == 8
    assert erm[0].encoder is None and erm[0].recipe.batch_size == 16  # the per-method recipe is OFER's alone
    other = write_mae_checkpoint(tmp_path / "other" / "mae.pth", seed=1)
    changed = load_protocol(str(protocol), {"encoders.ofer.path": f'"{other}"'})
    rehashed = [j for j in expand(changed, ["ofer"], plan_from(changed, None, {}))]
    assert {j.hash for j in rehashed}.isdisjoint({j.hash for j in ofer})  # another MAE: other jobs

    uri = f"jsonl:{tmp_path}/runs"
    assert main(["run", "--protocol", str(protocol), "--tracking-uri", uri, "--methods", "ofer",
                 "--sources", "synth5/studio"]) == 0
    store = open_store(uri)
    run = store.runs(store.experiment("tiny"), jobs_only=True)[0]
    assert run.status == "FINISHED" and run.params["encoder"] == "mae:vit_large_patch16:visualize"
    assert run.params["recipe.batch_size"] == "8" and run.params["hp.momentum"] == "0.9"
    assert run.params["execution.adam"] == "none (sgd)"
    assert run.params["encoder.digest"] == ofer[0].encoder_digest
