"""Measure synth5's domain gap: a small CNN trained on each domain, tested on all five.

    python -m benchmark.data.synth5_gap [--size 64] [--epochs 20] [--scale 1.0]

Prints the 5x5 source -> target accuracy table. It is a property check of the generated data
(in-domain accuracy clearly above cross-domain), independent of the methods in `methods/`.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from torch import nn

from . import DATASETS, decode_split
from .synth5 import DOMAINS


def small_cnn(num_classes: int = 7) -> nn.Module:
    layers: list[nn.Module] = []
    width_in = 3
    for width in (32, 64, 128, 128):
        layers += [nn.Conv2d(width_in, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(), nn.MaxPool2d(2)]
        width_in = width
    return nn.Sequential(*layers[:-1], nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width_in, num_classes))


def load_tensors(domain: str, split: str, size: int, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    samples = DATASETS.get(f"synth5/{domain}").load(None, split, scale=scale)
    decoded = decode_split(samples, size)
    x = torch.from_numpy(np.array(decoded.images)).permute(0, 3, 1, 2).float() / 255.0
    return x, torch.from_numpy(decoded.labels)


def gap_table(size: int = 64, epochs: int = 20, scale: float = 1.0, seed: int = 0,
              domains: list[str] | None = None) -> dict[str, dict[str, float]]:
    """{source: {target: test accuracy}} for a small CNN trained with Adam and random flips."""
    domains = domains or list(DOMAINS)
    tests = {d: load_tensors(d, "test", size, scale) for d in DOMAINS}
    table: dict[str, dict[str, float]] = {}
    for source in domains:
        torch.manual_seed(seed)
        x, y = load_tensors(source, "train", size, scale)
        model = small_cnn()
        optim = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-4)
        for _ in range(epochs):
            model.train()
            order = torch.randperm(len(y))
            for start in range(0, len(y), 64):
                idx = order[start:start + 64]
                batch = x[idx]
                flip = torch.rand(len(idx)) < 0.5
                batch[flip] = batch[flip].flip(-1)
                loss = nn.functional.cross_entropy(model(batch), y[idx])
                optim.zero_grad()
                loss.backward()
                optim.step()
        model.eval()
        with torch.no_grad():
            table[source] = {t: float((model(xt).argmax(1) == yt).float().mean()) for t, (xt, yt) in tests.items()}
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    start = time.time()
    table = gap_table(args.size, args.epochs, args.scale, args.seed)
    targets = list(DOMAINS)
    print("| train \\ test | " + " | ".join(targets) + " | mean of other four |")
    print("|---" * (len(targets) + 2) + "|")
    for source, row in table.items():
        others = np.mean([row[t] for t in targets if t != source])
        print(f"| {source} | " + " | ".join(f"{100 * row[t]:.1f}" for t in targets) + f" | {100 * others:.1f} |")
    print(f"({time.time() - start:.0f} s, {args.size} px, {args.epochs} epochs, scale {args.scale}, seed {args.seed})")


if __name__ == "__main__":
    main()
