"""The common per-sample data path, kept as the reference the fast path is checked against.

Published FER code (CAFE's, SCN's, EAC's loaders) decodes each image file and transforms it
alone in DataLoader workers, every epoch: Gaussian noise N(0, 30) on the native-size uint8 image
with p=0.5, resize, ToTensor, ImageNet Normalize, RandomHorizontalFlip, RandomErasing
(scale 0.02-0.25, value 0). `recipe.data_path = "per_sample"` trains this way (the split's
source images, not the decoded cache); `benchmark perf` times it against the fast path.

Randomness comes from torch's generator in each worker, which the DataLoader seeds from the
job's generator, so a per-sample job is reproducible for a fixed number of workers.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from .augment import ERASE_RATIO, ERASE_SCALE, IMAGENET_MEAN, IMAGENET_STD, NOISE_STD, PAPER, AugmentSpec
from ..data.cache import DecodedSplit, native_image
from ..data.images import resize_square
from ..data.samples import Samples
from ..core.errors import BenchmarkError


class PerSampleDataset(Dataset):
    """Row i of a split: (augmented, normalised (3, size, size) tensor, i)."""

    def __init__(self, samples: Samples, kept: np.ndarray, size: int, spec: AugmentSpec = PAPER):
        from torchvision import transforms

        self.samples, self.kept, self.size, self.spec = samples, kept, size, spec
        self.transform = transforms.Compose([
            transforms.ToTensor(), transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
            transforms.RandomHorizontalFlip(spec.flip_p),
            transforms.RandomErasing(p=spec.erase_p, scale=ERASE_SCALE, ratio=ERASE_RATIO, value=0)])

    def __len__(self) -> int:
        return len(self.kept)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        img = np.asarray(native_image(self.samples, int(self.kept[i])))
        if torch.rand(()) < self.spec.noise_p:  # noise before the resize, on the uint8 image
            noise = torch.randn(img.shape).numpy() * NOISE_STD
            img = np.clip(img + noise, 0, 255).astype(np.uint8)
        return self.transform(resize_square(Image.fromarray(img), self.size).copy()), i


def check_per_sample(data: DecodedSplit, spec: AugmentSpec, method: str) -> None:
    if data.samples is None:
        raise BenchmarkError(f"{method}: recipe.data_path = 'per_sample' needs the split's source images; "
                             f"{data.dataset}/{data.split} was built without them")
    if spec.one_of_p:
        raise BenchmarkError(f"{method}: the per-sample reference path implements the paper's noise/flip/erase "
                             "augmentation only, not the one-of policy (one_of_p); use data_path = 'cache'")


def per_sample_batches(data: DecodedSplit, order: np.ndarray, batch_size: int, device: torch.device,
                       workers: int, gen: torch.Generator,
                       spec: AugmentSpec = PAPER) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
    """(row indices, augmented batch on `device`) for one epoch in `order`."""
    dataset = PerSampleDataset(data.samples, data.kept, data.size, spec)
    batches = [order[b:b + batch_size].tolist() for b in range(0, len(order), batch_size)]
    loader = DataLoader(dataset, batch_sampler=batches, num_workers=workers, generator=gen,
                        pin_memory=device.type == "cuda")
    for x, rows in loader:
        yield rows.numpy(), x.to(device, non_blocking=True)
