"""OFER (Latent-OFER, ICCV 2023): DAN-style attention heads on ResNet-18 plus a latent branch
fed with masked-autoencoder latents — as the authors' released classifier (`networks/OURS.py`,
`main.py`) computes it.

    f      = ResNet-18 trunk(x)                                  (B, 512, 7, 7), MS-Celeb weights
    head_i = SpatialAttention(ChannelAttention(f))               4 heads, each (B, 512)
             ChannelAttention: f * sigmoid(Linear 32->512(ReLU(BN(Linear 512->32(GAP f)))))
             SpatialAttention: GAP(f' * sum_c ReLU(BN conv3x3 + BN conv1x3 + BN conv3x1 of BN conv1x1(f')))
    h      = sum_i log_softmax over heads (head_i)               (B, 512)
    z      = BN(L4(L3(BN(L2(L1(latent))))))                      39936 -> 10000 -> 5000 -> 1024 -> 256, no activations
    logits = BN7(fc4(BN(fc2(fc([h, z])))))                       768 -> 256 -> 128 -> 7, no activations
    loss   = CE(logits, y);  SGD(lr 0.1, momentum 0.9, wd 1e-4 on every parameter), StepLR(10, 0.1)

The latent of an image is its frozen MAE's decoder tokens at 78 central positions (see
benchmark.models.mae), computed once on the un-augmented image, as the released code reads one
`.pt` file per image whatever the augmentation did. The released pipeline first detects occluded
patches and reconstructs them; that code is not released and is not run here.
Augmentation (main.py): horizontal flip, with p = 0.2 a rotation of up to 20 degrees and a crop
with 32 px padding, RandomErasing(p 0.5, scale 0.02-0.25); no Gaussian noise. The authors' batch
is 128 (the gfer5 protocol's [method_recipe.ofer]).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn import init

from benchmark.api import (AugmentSpec, BaseHparams, Batch, BenchmarkError, Numerics, NUM_CLASSES,
                           OptimizerSettings, TrainedMethod, check_range, register_method)


@dataclass
class OferHparams(BaseHparams):
    lr: float = 0.1
    weight_decay: float = 1e-4
    lr_gamma: float = 0.1
    lr_step: int = 10  # StepLR(step_size=10, gamma=0.1), stepped once per epoch
    momentum: float = 0.9
    num_heads: int = 4
    # The latent branch's widths after the input (39,936 for ViT-L latents), as released.
    latent_layers: tuple = (10000, 5000, 1024, 256)

    def __post_init__(self) -> None:
        super().__post_init__()
        check_range(self.lr_step >= 1, "lr_step", self.lr_step, ">= 1")
        check_range(0 <= self.momentum < 1, "momentum", self.momentum, "in [0, 1)")
        check_range(self.num_heads >= 1, "num_heads", self.num_heads, ">= 1")
        check_range(len(self.latent_layers) == 4 and all(isinstance(w, int) and w > 0 for w in self.latent_layers),
                    "latent_layers", self.latent_layers, "four positive widths")

    def optimizer(self) -> OptimizerSettings:
        return OptimizerSettings(self.lr, self.weight_decay, self.lr_gamma, optimizer="sgd", momentum=self.momentum,
                                 lr_step=self.lr_step)


class ChannelAttention(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.attention = nn.Sequential(nn.Linear(channels, 32), nn.BatchNorm1d(32), nn.ReLU(inplace=True),
                                       nn.Linear(32, channels), nn.Sigmoid())

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return f * self.attention(self.gap(f).flatten(1))[:, :, None, None]


class SpatialAttention(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv1x1 = nn.Sequential(nn.Conv2d(channels, 256, kernel_size=1), nn.BatchNorm2d(256))
        self.conv_3x3 = nn.Sequential(nn.Conv2d(256, channels, kernel_size=3, padding=1), nn.BatchNorm2d(channels))
        self.conv_1x3 = nn.Sequential(nn.Conv2d(256, channels, kernel_size=(1, 3), padding=(0, 1)),
                                      nn.BatchNorm2d(channels))
        self.conv_3x1 = nn.Sequential(nn.Conv2d(256, channels, kernel_size=(3, 1), padding=(1, 0)),
                                      nn.BatchNorm2d(channels))
        self.gap = nn.AdaptiveAvgPool2d(1)

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        y = self.conv1x1(f)
        y = F.relu(self.conv_3x3(y) + self.conv_1x3(y) + self.conv_3x1(y)).sum(dim=1, keepdim=True)
        return self.gap(f * y).flatten(1)


class CrossAttentionHead(nn.Module):
    """Channel attention, then spatial attention (the released order), with its own init."""

    def __init__(self, channels: int):
        super().__init__()
        self.sa = SpatialAttention(channels)
        self.ca = ChannelAttention(channels)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                init.kaiming_normal_(m.weight, mode="fan_out")
                if m.bias is not None:
                    init.constant_(m.bias, 0)
            elif isinstance(m, nn.BatchNorm2d):
                init.constant_(m.weight, 1)
                init.constant_(m.bias, 0)
            elif isinstance(m, nn.Linear):
                init.normal_(m.weight, std=0.001)
                if m.bias is not None:
                    init.constant_(m.bias, 0)

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return self.sa(self.ca(f))


class OferNet(nn.Module):
    """The released `OURS` module; its layers keep the released names (the trunk is `backbone`)."""

    def __init__(self, backbone: nn.Module, latent_dim: int, num_heads: int, latent_layers: tuple):
        super().__init__()
        channels = backbone.dim
        self.backbone = backbone
        self.num_head = num_heads
        for i in range(num_heads):
            setattr(self, f"cat_head{i}", CrossAttentionHead(channels))
        w1, w2, w3, w4 = latent_layers
        self.hh_layer = nn.Linear(latent_dim, w1)
        self.hh_layer2 = nn.Linear(w1, w2)
        self.hh_batch1 = nn.BatchNorm1d(w2)
        self.hh_layer3 = nn.Linear(w2, w3)
        self.hh_layer4 = nn.Linear(w3, w4)
        self.batch_norm1 = nn.BatchNorm1d(w4)
        self.fc = nn.Linear(channels + w4, 256)
        self.fc2 = nn.Linear(256, 128)
        self.batch_norm = nn.BatchNorm1d(128)
        self.fc4 = nn.Linear(128, NUM_CLASSES)
        self.bn = nn.BatchNorm1d(NUM_CLASSES)

    def forward(self, x: torch.Tensor, latent: torch.Tensor) -> torch.Tensor:
        f = self.backbone.feature_map(x)
        heads = torch.stack([getattr(self, f"cat_head{i}")(f) for i in range(self.num_head)], dim=1)
        if heads.shape[1] > 1:
            heads = F.log_softmax(heads, dim=1).sum(dim=1)
        else:
            heads = heads[:, 0]
        z = self.batch_norm1(self.hh_layer4(self.hh_layer3(self.hh_batch1(self.hh_layer2(self.hh_layer(latent))))))
        out = self.fc2(self.fc(torch.cat([heads, z], dim=1)))
        return self.bn(self.fc4(self.batch_norm(out)))


@register_method("ofer", "Latent-OFER (ICCV 2023): attention heads on ResNet-18 + MAE latents of the face (released classifier)")
class Ofer(TrainedMethod):
    Hparams = OferHparams
    training_logits = True
    needs_encoder = True
    default_encoder = "mae:vit_large_patch16:visualize"
    # Not fused: each job's 400M-parameter latent layer would be stacked K times, and its latents
    # are read from a cache, not computed on the batch.
    fuses = False
    augment_spec = AugmentSpec(noise_p=0.0, flip_p=0.5, erase_p=0.5, affine_p=0.2, affine_degrees=20.0, affine_pad=32)
    _latents: torch.Tensor | None = None  # the training split's latents, while fit runs

    def make_model(self) -> nn.Module:
        return OferNet(self.new_backbone(), self.components.encoder.dim, self.hparams.num_heads,
                       self.hparams.latent_layers)

    def trains_on_encoder(self) -> bool:
        return False  # the latents are the cached ones of the un-augmented images

    @contextlib.contextmanager
    def training_features(self, train_data, recipe, device):
        """The training split's latents, computed once (and cached on disk) before training."""
        self.place(device, Numerics.from_recipe(device, recipe))
        self._latents = self.components.features.get(self.placed_encoder(), train_data, device)
        try:
            yield
        finally:
            self._latents = None

    def training_step(self, batch: Batch):
        if batch.images.shape[0] == 1:  # the released code fails here too (BatchNorm1d on one sample)
            raise BenchmarkError(f"{self.name}: a training batch of one sample (the split's last): its BatchNorm1d "
                                 "layers cannot train on it; choose a recipe.batch_size that leaves more")
        if self._latents is None:
            raise BenchmarkError(f"{self.name}: training_step outside fit (the training latents are computed there)")
        index = torch.from_numpy(batch.index).to(self._latents.device, non_blocking=True)
        logits = self.model(batch.images, self._latents[index].to(batch.images.device))
        loss = F.cross_entropy(batch.record_logits(logits), batch.labels)
        return loss, {"ce": loss.detach()}

    def logits(self, x, rows, data) -> torch.Tensor:
        return self.model(x, self.cached_features(data, rows).to(x.device))
