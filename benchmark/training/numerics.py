"""How a job's arithmetic runs on its device: precision, memory layout, compilation.

Three recipe keys choose it (all in the job hash, since each can change the numbers' last bits):

- `precision`:
  - "auto" (default, the authors' arithmetic): the trainable model in fp32 everywhere; on CUDA an
    open_clip encoder holds fp16 weights, as the authors' code does; on CPU everything is fp32.
    (Until 2026-11-26 "auto" also ran the trainable model under bf16 autocast on CUDA.)
  - "fp32": fp32 everywhere (the reference).
  - "bf16": the named fast option: bf16 autocast for the trainable model and bf16 encoder
    weights on any device. On CPUs with native bf16 (AVX512-BF16 / AMX) this is about twice as
    fast as fp32; elsewhere slower.
- `channels_last`: NHWC memory layout for the trainable model and its inputs (faster convolutions
  with cuDNN and oneDNN).
- `compile`: `torch.compile` the trainable model (a one-off compile cost per job; CUDA mostly).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from ..core.errors import BenchmarkError
from .recipe import PRECISIONS


@dataclass(frozen=True)
class Numerics:
    device: torch.device
    precision: str = "fp32"  # the recipe's name for it ("auto" resolves per device)
    autocast_dtype: torch.dtype | None = None  # trainable model, in training and evaluation
    encoder_dtype: torch.dtype = torch.float32  # open_clip encoders (torchvision ones: see below)
    encoder_dtype_any: bool = False  # True: torchvision encoders take encoder_dtype too
    channels_last: bool = False
    compile: bool | str = False  # False, or torch.compile's mode ("default", "reduce-overhead", ...)

    @classmethod
    def resolve(cls, device: torch.device, precision: str = "auto", channels_last: bool = False,
                compile: bool | str = False) -> "Numerics":
        if compile is True:
            compile = "default"
        if precision not in PRECISIONS:
            raise BenchmarkError(f"recipe.precision = {precision!r}; expected one of {', '.join(PRECISIONS)}")
        if precision == "bf16":
            return cls(device, precision, torch.bfloat16, torch.bfloat16, True, channels_last, compile)
        if precision == "auto" and device.type == "cuda":
            return cls(device, precision, None, torch.float16, False, channels_last, compile)
        return cls(device, precision, None, torch.float32, False, channels_last, compile)

    @classmethod
    def from_recipe(cls, device: torch.device, recipe) -> "Numerics":
        return cls.resolve(device, recipe.precision, recipe.channels_last,
                           recipe.compile and recipe.compile_mode)

    def encoder_dtype_for(self, is_clip: bool) -> torch.dtype:
        return self.encoder_dtype if is_clip or self.encoder_dtype_any else torch.float32

    def autocast(self):
        """Context for the trainable model's forward (a no-op in fp32)."""
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def layout(self, x: torch.Tensor) -> torch.Tensor:
        """The model input in the chosen memory layout."""
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last and x.dim() == 4 else x

    def prepare(self, model: torch.nn.Module) -> torch.nn.Module:
        """The trainable model in the chosen layout (compilation is `compiled`, applied by the caller)."""
        return model.to(memory_format=torch.channels_last) if self.channels_last else model


def host_batch(array, device: torch.device) -> torch.Tensor:
    """A host array as a tensor ready for a non-blocking copy to `device` (pinned for CUDA)."""
    tensor = torch.from_numpy(array)
    return tensor.pin_memory() if device.type == "cuda" else tensor


def to_device_batch(array, device: torch.device) -> torch.Tensor:
    """A host array as a tensor on `device`; through pinned memory with a non-blocking copy on CUDA."""
    return host_batch(array, device).to(device, non_blocking=True)
