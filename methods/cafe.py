"""CAFE (ECCV 2024): sigmoid masks learned over frozen CLIP features — as the authors' code runs.

Training step (the paper's Sec. 3.2 and the authors' train script), with F the frozen encoder's
feature of the augmented batch and M the backbone's global-average-pooled feature (post-ReLU,
so M >= 0):

    Ft     = F * sigmoid(M)                  mask in [0.5, 1): no layer before the sigmoid
    logits = fc(Ft)                          the FC head, also used at test time
    G      = Ft[:, :7g].view(B, 7, g)        g = floor(width / 7) = 73 for 512: channel 511 unpooled
    l_sep  = CE(max_g(G * drop), y)          one drop mask for the whole batch, 10 zeros per group
    l_div  = 1 - mean_{b,k} max_g(G) / g     `div_norm="code"`; "paper" (Eq. 8) is 7x larger
    loss   = CE(logits, y) + 1.5 l_sep + 5 l_div

Variants are registrations with other defaults: `cafe_mask` (mask + FC only), `cafe_mask_sep`
(no diverse loss), `cafe_nosigmoid` (Ft = F * M, Table 5). `use_mask=False` is the plain
backbone + FC (Table 2's baseline; the same as `erm`). When the encoder and backbone widths
differ, the wider feature is reduced to the narrower by averaging channel windows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from benchmark.api import (Batch, BenchmarkError, CLASSES, EncoderHparams, NUM_CLASSES, TrainedMethod,
                           check_clip_features, check_range, normalize, register_method)


DIV_NORMS = ("code", "paper")


@dataclass
class CafeHparams(EncoderHparams):
    sep_weight: float = 1.5  # lambda
    div_weight: float = 5.0  # beta
    drop_per_group: int = 10  # zeros per group in the channel-drop mask
    div_norm: str = "code"  # "code": /(B*7*g) as the released code; "paper": Eq. 8, /(B*g)
    use_mask: bool = True
    use_sigmoid: bool = True
    use_sep: bool = True
    use_div: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        for key in ("sep_weight", "div_weight", "drop_per_group"):
            check_range(getattr(self, key) >= 0, key, getattr(self, key), ">= 0")


def match_width(feat: torch.Tensor, width: int) -> torch.Tensor:
    """(B, C) -> (B, width) by averaging windows of consecutive channels (identity if C == width)."""
    if feat.shape[1] == width:
        return feat
    return F.adaptive_avg_pool1d(feat.unsqueeze(1), width).squeeze(1)


def group_size(width: int) -> int:
    return width // NUM_CLASSES


def grouped(ft: torch.Tensor) -> torch.Tensor:
    """(B, width) -> (B, 7, g): group k is channels [k*g, (k+1)*g); the remainder is never pooled."""
    g = group_size(ft.shape[1])
    return ft[:, : NUM_CLASSES * g].reshape(ft.shape[0], NUM_CLASSES, g)


def drop_mask(width: int, drops: int, rng) -> torch.Tensor:
    """(7, g) 0/1 mask: per group a random permutation of (len - drops) ones and `drops` zeros.

    The last group spans the remaining width - 6g channels (74 for 512) and is cut to g after
    the permutation, exactly as upstream lays it out.
    """
    g = group_size(width)
    rows = []
    for k in range(NUM_CLASSES):
        length = g if k < NUM_CLASSES - 1 else width - (NUM_CLASSES - 1) * g
        entries = [1.0] * (length - drops) + [0.0] * drops
        rng.shuffle(entries)
        rows.append(entries[:g])
    return torch.tensor(rows)


def separation_and_diversity(groups: torch.Tensor, y: torch.Tensor, drop: torch.Tensor | None, hparams: CafeHparams,
                             ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """sep_weight l_sep + div_weight l_div over the (B, 7, g) channel groups (each term as the
    hyperparameters switch it on) and the parts to log."""
    total, parts = torch.zeros((), device=groups.device, dtype=groups.dtype), {}
    if hparams.use_sep:
        sep = F.cross_entropy((groups * drop.to(groups.dtype)).amax(-1), y)
        total = total + hparams.sep_weight * sep
        parts["sep"] = sep.detach()
    if hparams.use_div:
        div = diverse_loss(groups.amax(-1), groups.shape[-1], hparams.div_norm)
        total = total + hparams.div_weight * div
        parts["div"] = div.detach()
    return total, parts


def diverse_loss(group_max: torch.Tensor, g: int, norm: str) -> torch.Tensor:
    """1 - sum of group maxima / normaliser; "code" averages over batch and classes, "paper" over batch only."""
    if norm == "code":
        return 1 - group_max.mean() / g
    if norm == "paper":
        return 1 - group_max.sum() / (group_max.shape[0] * g)
    raise BenchmarkError(f"div_norm = {norm!r}; expected one of {', '.join(DIV_NORMS)}")


@register_method("cafe", "CAFE: sigmoid mask on frozen CLIP features + channel separation + diverse loss (the paper)")
@register_method("cafe_mask", "CAFE ablation: sigmoid mask + FC only (Table 2 'mask')", use_sep=False, use_div=False)
@register_method("cafe_mask_sep", "CAFE ablation: mask + channel separation, no diverse loss (Table 2)", use_div=False)
@register_method("cafe_nosigmoid", "CAFE without the sigmoid: Ft = F * M (Table 5)", use_sigmoid=False)
class Cafe(TrainedMethod):
    Hparams = CafeHparams
    training_logits = True
    needs_encoder = True
    fuses = True

    def __init__(self, hparams, components, name=""):
        super().__init__(hparams, components, name)
        if hparams.div_norm not in DIV_NORMS:
            raise BenchmarkError(f"{self.name}: div_norm = {hparams.div_norm!r}; expected one of {', '.join(DIV_NORMS)}")
        check_clip_features(self.name, hparams.clip_features)
        if not hparams.use_mask and (hparams.use_sep or hparams.use_div):
            raise BenchmarkError(f"{self.name}: use_mask=False is the plain backbone (Table 2 baseline); "
                                 "it takes use_sep=False and use_div=False")

    def make_model(self) -> nn.Module:
        backbone = self.new_backbone()
        self.width = min(self.components.encoder.dim, backbone.dim) if self.hparams.use_mask else backbone.dim
        if group_size(self.width) <= self.hparams.drop_per_group:
            raise BenchmarkError(f"{self.name}: feature width {self.width} gives groups of {group_size(self.width)} "
                                 f"channels, too few to drop {self.hparams.drop_per_group}")
        return nn.ModuleDict({"backbone": backbone, "fc": nn.Linear(self.width, NUM_CLASSES)})

    def mask(self, x: torch.Tensor) -> torch.Tensor:
        m = match_width(self.model["backbone"](x), self.width)
        return torch.sigmoid(m) if self.hparams.use_sigmoid else m

    def masked_feature(self, clip_feat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if not self.hparams.use_mask:
            return self.model["backbone"](x)
        return match_width(clip_feat, self.width).float() * self.mask(x)

    def trains_on_encoder(self) -> bool:
        return self.hparams.use_mask

    def step_extras(self, batch: Batch) -> dict[str, torch.Tensor]:
        if not self.hparams.use_sep:
            return {}
        return {"drop": drop_mask(self.width, self.hparams.drop_per_group, self.rng).to(batch.images.device,
                                                                                     non_blocking=True)}

    def training_step(self, batch: Batch):
        x, y = batch.images, batch.labels
        clip_feat = self.encoder_features(batch) if self.hparams.use_mask else None
        ft = self.masked_feature(clip_feat, x)
        ce = F.cross_entropy(batch.record_logits(self.model["fc"](ft)), y)
        if not (self.hparams.use_sep or self.hparams.use_div):
            return ce, {"ce": ce.detach()}
        extra, parts = separation_and_diversity(grouped(ft), y, batch.extra.get("drop"), self.hparams)
        return ce + extra, {"ce": ce.detach(), **parts}

    def logits(self, x, rows, data) -> torch.Tensor:
        clip_feat = self.cached_features(data, rows) if self.hparams.use_mask else None
        return self.model["fc"](self.masked_feature(clip_feat, x))

    @torch.no_grad()
    def class_masks(self, data) -> np.ndarray:
        """(7, width) mean mask of each class over `data` (NaN rows for absent classes)."""
        self.model.eval()
        sums = torch.zeros(NUM_CLASSES, self.width)
        counts = torch.zeros(NUM_CLASSES)
        for start in range(0, len(data), self.eval_batch_size):
            x = normalize(torch.from_numpy(data.read(slice(start, start + self.eval_batch_size))).to(self.device))
            y = torch.from_numpy(data.labels[start:start + self.eval_batch_size])
            sums.index_add_(0, y, self.mask(x).float().cpu())
            counts += torch.bincount(y, minlength=NUM_CLASSES).float()
        return (sums / counts[:, None]).numpy()

    def report(self, data, log) -> None:
        """The paper's Fig. 5: the mean learned mask of each class's images over the channels, the
        7 channel groups of the separation loss marked, channels averaged in bins when the
        feature is too wide to show one column per channel legibly."""
        if not self.hparams.use_mask:
            return
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        masks = self.class_masks(data)
        g = group_size(self.width)
        bins_per_group = min(g, 32)  # at most 7 x 32 columns: legible at any page width
        edges = [np.linspace(k * g, (k + 1) * g, bins_per_group + 1).round().astype(int) for k in range(NUM_CLASSES)]
        binned = np.stack([masks[:, lo:hi].mean(axis=1) for e in edges for lo, hi in zip(e[:-1], e[1:])], axis=1)
        fig, ax = plt.subplots(figsize=(10, 3.4), dpi=200)
        im = ax.imshow(binned, aspect="auto", interpolation="nearest", cmap="viridis")
        ax.set_yticks(range(NUM_CLASSES), CLASSES)
        ax.set_xticks([(k + 0.5) * bins_per_group - 0.5 for k in range(NUM_CLASSES)],
                      [f"group {k + 1}" for k in range(NUM_CLASSES)])
        ax.set_xlabel(f"feature channels, 7 groups of {g}" + (f", each averaged into {bins_per_group} bins"
                                                              if bins_per_group < g else ""))
        ax.set_title(f"{self.name}: mean {'sigmoid ' if self.hparams.use_sigmoid else ''}mask per class "
                     f"({data.dataset} {data.split})", fontsize=10)
        for k in range(1, NUM_CLASSES):
            ax.axvline(k * bins_per_group - 0.5, color="white", linewidth=1.2)
        fig.colorbar(im, ax=ax, label="mean mask value")
        fig.tight_layout()
        log.figure(f"{self.name}_masks.png", fig)
