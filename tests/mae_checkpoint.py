"""A small random MAE checkpoint in facebookresearch/mae's key layout (models_mae.py's
MaskedAutoencoderViT, saved as {"model": state dict} like its published files), and a plain
transcription of that model's forward pass with nothing masked, written from the layout alone
(no timm), to check benchmark.models.mae against."""

from __future__ import annotations

from pathlib import Path

import torch
from torch.nn import functional as F


def mae_state(width: int = 32, depth: int = 2, dec_width: int = 16, dec_depth: int = 1, patch: int = 16,
              grid: int = 14, decoder: bool = True, seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale=0.05):
        return torch.randn(*shape, generator=gen) * scale

    def block(prefix: str, dim: int) -> dict[str, torch.Tensor]:
        return {f"{prefix}.norm1.weight": 1 + rnd(dim), f"{prefix}.norm1.bias": rnd(dim),
                f"{prefix}.attn.qkv.weight": rnd(3 * dim, dim, scale=0.2), f"{prefix}.attn.qkv.bias": rnd(3 * dim),
                f"{prefix}.attn.proj.weight": rnd(dim, dim, scale=0.2), f"{prefix}.attn.proj.bias": rnd(dim),
                f"{prefix}.norm2.weight": 1 + rnd(dim), f"{prefix}.norm2.bias": rnd(dim),
                f"{prefix}.mlp.fc1.weight": rnd(4 * dim, dim, scale=0.2), f"{prefix}.mlp.fc1.bias": rnd(4 * dim),
                f"{prefix}.mlp.fc2.weight": rnd(dim, 4 * dim, scale=0.2), f"{prefix}.mlp.fc2.bias": rnd(dim)}

    tokens = grid * grid + 1
    state = {"cls_token": rnd(1, 1, width), "pos_embed": rnd(1, tokens, width),
             "patch_embed.proj.weight": rnd(width, 3, patch, patch), "patch_embed.proj.bias": rnd(width),
             "norm.weight": 1 + rnd(width), "norm.bias": rnd(width)}
    for i in range(depth):
        state.update(block(f"blocks.{i}", width))
    if decoder:
        state.update({"decoder_embed.weight": rnd(dec_width, width, scale=0.2), "decoder_embed.bias": rnd(dec_width),
                      "mask_token": rnd(1, 1, dec_width), "decoder_pos_embed": rnd(1, tokens, dec_width),
                      "decoder_norm.weight": 1 + rnd(dec_width), "decoder_norm.bias": rnd(dec_width),
                      "decoder_pred.weight": rnd(patch * patch * 3, dec_width), "decoder_pred.bias": rnd(patch * patch * 3)})
        for i in range(dec_depth):
            state.update(block(f"decoder_blocks.{i}", dec_width))
    return state


def write_mae_checkpoint(path: Path, **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": mae_state(**kwargs)}, path)
    return path


def _block(state: dict, prefix: str, x: torch.Tensor, heads: int) -> torch.Tensor:
    def ln(t, name):
        return F.layer_norm(t, t.shape[-1:], state[f"{prefix}.{name}.weight"], state[f"{prefix}.{name}.bias"], 1e-6)

    b, n, d = x.shape
    qkv = F.linear(ln(x, "norm1"), state[f"{prefix}.attn.qkv.weight"], state[f"{prefix}.attn.qkv.bias"])
    q, k, v = qkv.reshape(b, n, 3, heads, d // heads).permute(2, 0, 3, 1, 4)
    attn = ((q @ k.transpose(-2, -1)) * (d // heads) ** -0.5).softmax(dim=-1)
    x = x + F.linear((attn @ v).transpose(1, 2).reshape(b, n, d), state[f"{prefix}.attn.proj.weight"],
                     state[f"{prefix}.attn.proj.bias"])
    h = F.gelu(F.linear(ln(x, "norm2"), state[f"{prefix}.mlp.fc1.weight"], state[f"{prefix}.mlp.fc1.bias"]))
    return x + F.linear(h, state[f"{prefix}.mlp.fc2.weight"], state[f"{prefix}.mlp.fc2.bias"])


def reference_decoder_tokens(state: dict, x: torch.Tensor, heads: int, dec_heads: int = 16) -> torch.Tensor:
    """MAE's forward_encoder then forward_decoder up to decoder_norm, mask ratio 0 (the shuffle of
    random_masking and its unshuffle cancel: blocks treat tokens alike), from the state alone."""
    patch = state["patch_embed.proj.weight"].shape[-1]
    h = F.conv2d(x, state["patch_embed.proj.weight"], state["patch_embed.proj.bias"], stride=patch)
    h = h.flatten(2).transpose(1, 2) + state["pos_embed"][:, 1:]
    cls = state["cls_token"] + state["pos_embed"][:, :1]
    h = torch.cat([cls.expand(h.shape[0], -1, -1), h], dim=1)
    depth = len({k.split(".")[1] for k in state if k.startswith("blocks.")})
    for i in range(depth):
        h = _block(state, f"blocks.{i}", h, heads)
    h = F.layer_norm(h, h.shape[-1:], state["norm.weight"], state["norm.bias"], 1e-6)
    h = F.linear(h, state["decoder_embed.weight"], state["decoder_embed.bias"]) + state["decoder_pos_embed"]
    dec_depth = len({k.split(".")[1] for k in state if k.startswith("decoder_blocks.")})
    for i in range(dec_depth):
        h = _block(state, f"decoder_blocks.{i}", h, dec_heads)
    return F.layer_norm(h, h.shape[-1:], state["decoder_norm.weight"], state["decoder_norm.bias"], 1e-6)
