"""A frozen masked autoencoder (MAE, He et al. 2022) read from facebookresearch/mae's checkpoints,
as the latent source of OFER (Latent-OFER, ICCV 2023).

Only the "visualize" checkpoints carry the decoder (`mae_visualize_vit_large.pth` and its
siblings: {"model": state dict} with the keys of `models_mae.MaskedAutoencoderViT`); the
`mae_pretrain_*` files hold the encoder alone and are refused. The architecture is read from
the tensors' shapes (width, depth, patch, image size); heads follow MAE's configurations.

Latent (`mae:<model>:<tag>` encoder ids, e.g. `mae:vit_large_patch16:visualize`): the image runs
through the encoder with nothing masked, then the decoder; the decoder's normalised token
embeddings (`decoder_norm`, before the pixel head) of the sequence [class token, 196 patches]
are taken at OFER's 78 central positions, row by row, and flattened: 78 x 512 = 39,936 values
for ViT-L. Latent-OFER first detects occluded patches (an SVDD on ViT latents) and reconstructs
them before this step; that code is not released, so the latent here is of the image as given.
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from ..core.errors import BenchmarkError
from .weights import WeightsError, load_state_dict, load_strict

# Latent-OFER's main.py: the token indices it keeps of a 197-token sequence (class token at 0):
# rows 3..11 of the 14 x 14 patch grid at columns 3..10, and row 12 at columns 3..8.
OFER_TOKENS = (46, 47, 48, 49, 50, 51, 52, 53, 60, 61, 62, 63, 64, 65, 66, 67, 74, 75, 76, 77, 78, 79, 80, 81,
               88, 89, 90, 91, 92, 93, 94, 95, 102, 103, 104, 105, 106, 107, 108, 109, 116, 117, 118, 119, 120,
               121, 122, 123, 130, 131, 132, 133, 134, 135, 136, 137, 144, 145, 146, 147, 148, 149, 150, 151,
               158, 159, 160, 161, 162, 163, 164, 165, 172, 173, 174, 175, 176, 177)
OFER_GRID = 14  # the patch grid those indices are positions of
# The checkpoint files facebookresearch/mae publishes with a decoder, by model name.
CHECKPOINTS = {"vit_base_patch16": "mae_visualize_vit_base.pth", "vit_large_patch16": "mae_visualize_vit_large.pth",
               "vit_huge_patch14": "mae_visualize_vit_huge.pth"}
DOWNLOAD_BASE = "https://dl.fbaipublicfiles.com/mae/visualize/"
ENCODER_HEADS = {768: 12, 1024: 16, 1280: 16}  # ViT-B, -L, -H; other widths: 64 channels a head
DECODER_HEADS = 16  # every MAE model's decoder


def checkpoint_file(model: str, tag: str, path: str | None) -> Path:
    """The MAE checkpoint: `path`, else torch hub's checkpoint folder (where MAE's own demo puts
    it); offline and absent, an error naming the file and where to put it."""
    if tag != "visualize":
        raise BenchmarkError(f"encoder mae:{model}:{tag}: OFER's latent needs the decoder, which only the "
                             "'visualize' checkpoints carry (mae:<model>:visualize)")
    if path is not None:
        if not Path(path).is_file():
            raise WeightsError(f"{path}: MAE checkpoint not found")
        return Path(path)
    if model not in CHECKPOINTS:
        raise BenchmarkError(f"encoder mae:{model}:{tag}: no published checkpoint named for {model!r} "
                             f"(known: {', '.join(CHECKPOINTS)}); give the file with encoder path = FILE")
    hub = Path(torch.hub.get_dir()) / "checkpoints"
    local = hub / CHECKPOINTS[model]
    if local.is_file():
        return local
    raise WeightsError(f"no MAE checkpoint for {model}: download {DOWNLOAD_BASE}{CHECKPOINTS[model]} into {hub}/ "
                       f"(torch hub's checkpoint folder), or give its path (protocol [encoders.<method>] path = FILE)")


def _blocks(state: dict[str, torch.Tensor], prefix: str) -> int:
    return len({k.split(".")[1] for k in state if k.startswith(prefix + ".")})


class MaeLatent(nn.Module):
    """MAE encoder + decoder with no masking, returning the decoder's normalised tokens at
    `tokens` (flattened): the module a FrozenEncoder wraps for OFER."""

    def __init__(self, state: dict[str, torch.Tensor], source: str, tokens: tuple[int, ...] = OFER_TOKENS):
        super().__init__()
        from timm.models.vision_transformer import Block, PatchEmbed

        needed = ("patch_embed.proj.weight", "pos_embed", "cls_token", "decoder_embed.weight", "decoder_pos_embed",
                  "decoder_norm.weight")
        missing = [k for k in needed if k not in state]
        if missing:
            raise WeightsError(f"{source}: not an MAE checkpoint with its decoder (missing {', '.join(missing)}); "
                               "OFER needs a 'visualize' checkpoint, e.g. mae_visualize_vit_large.pth")
        width, _, patch, _ = state["patch_embed.proj.weight"].shape
        grid = round((state["pos_embed"].shape[1] - 1) ** 0.5)
        if grid != OFER_GRID:
            raise BenchmarkError(f"{source}: a {grid}x{grid} patch grid; OFER's latent positions are those of a "
                                 f"{OFER_GRID}x{OFER_GRID} grid (224 px, 16 px patches)")
        dec_width = state["decoder_embed.weight"].shape[0]
        self.img_size = grid * patch
        self.tokens = torch.tensor(tokens)
        self.dim = len(tokens) * dec_width
        self.patch_embed = PatchEmbed(self.img_size, patch, 3, width)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, width))
        self.pos_embed = nn.Parameter(torch.zeros(1, grid * grid + 1, width), requires_grad=False)
        norm = functools.partial(nn.LayerNorm, eps=1e-6)  # MAE's norm layer
        self.blocks = nn.ModuleList(Block(width, ENCODER_HEADS.get(width, max(1, width // 64)), 4.0, qkv_bias=True,
                                          norm_layer=norm) for _ in range(_blocks(state, "blocks")))
        self.norm = norm(width)
        self.decoder_embed = nn.Linear(width, dec_width)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dec_width))
        self.decoder_pos_embed = nn.Parameter(torch.zeros(1, grid * grid + 1, dec_width), requires_grad=False)
        self.decoder_blocks = nn.ModuleList(Block(dec_width, DECODER_HEADS, 4.0, qkv_bias=True, norm_layer=norm)
                                            for _ in range(_blocks(state, "decoder_blocks")))
        self.decoder_norm = norm(dec_width)
        self.decoder_pred = nn.Linear(dec_width, patch * patch * 3)
        load_strict(self, state, source)

    def sequence(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) ImageNet-normalised -> (B, 1 + grid^2, decoder width): decoder_norm's tokens."""
        if x.shape[-1] != self.img_size or x.shape[-2] != self.img_size:
            x = F.interpolate(x, size=(self.img_size, self.img_size), mode="bilinear", align_corners=False)
        h = self.patch_embed(x) + self.pos_embed[:, 1:]
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(h.shape[0], -1, -1)
        h = torch.cat([cls, h], dim=1)
        for block in self.blocks:
            h = block(h)
        h = self.decoder_embed(self.norm(h)) + self.decoder_pos_embed  # nothing masked: no mask tokens, no unshuffle
        for block in self.decoder_blocks:
            h = block(h)
        return self.decoder_norm(h)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.sequence(x)[:, self.tokens.to(x.device)].flatten(1)


def build_mae_latent(model: str, tag: str, path: str | None) -> tuple[MaeLatent, Path]:
    weights = checkpoint_file(model, tag, path)
    return MaeLatent(load_state_dict(weights), str(weights)), weights
