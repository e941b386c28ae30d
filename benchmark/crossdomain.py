"""Train methods on each synth5 domain and test on all five, in process, without MLflow.

    python -m benchmark.crossdomain --methods erm,cafe --size 64 --epochs 5 --scale 0.5

A quick check of synth5's domain gap and of the methods, before (and independent of) the grid
runner: it prints one 5x5 source -> target accuracy table per method, with the training time.
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import numpy as np
import torch

from .backbones import BackboneSpec
from .data import DATASETS, decode_split
from .data.synth5 import DOMAINS
from .encoders import EncoderSpec, build_encoder
from .trainer import Recipe, pick_device


def cross_domain(method_name: str, *, size: int, epochs: int, scale: float, seed: int, lr: float,
                 encoder: str, backbone: BackboneSpec, hparams: dict | None = None, recipe: dict | None = None,
                 ) -> tuple[dict[str, dict[str, float]], dict[str, float]]:
    from methods import METHODS, Components, MemoryLog, build_method

    device = pick_device()
    components = Components(backbone, build_encoder(EncoderSpec(encoder)))
    tests = {d: decode_split(DATASETS.get(f"synth5/{d}").load(None, "test", scale=scale), size) for d in DOMAINS}
    table, seconds = {}, {}
    for source in DOMAINS:
        train = decode_split(DATASETS.get(f"synth5/{source}").load(None, "train", scale=scale), size)
        # The same learning rate for every method that has one (clip_probe has none).
        has_lr = any(f.name == "lr" for f in dataclasses.fields(METHODS.get(method_name).cls.Hparams))
        method = build_method(method_name, {**({"lr": lr} if has_lr else {}), **(hparams or {})}, components)
        start = time.perf_counter()
        method.fit(train, recipe=Recipe(**{"epochs": epochs, "input_size": size, "seed": seed, "progress": False,
                                           **(recipe or {})}),
                   device=device, log=MemoryLog())
        seconds[source] = time.perf_counter() - start
        table[source] = {t: float((method.predict(d).argmax(1) == d.labels).mean()) for t, d in tests.items()}
    return table, seconds


def markdown(method: str, table: dict[str, dict[str, float]], seconds: dict[str, float]) -> str:
    targets = list(DOMAINS)
    lines = [f"{method}: train \\ test | " + " | ".join(targets) + " | mean unseen | train s",
             "|---" * (len(targets) + 3) + "|"]
    for source, row in table.items():
        unseen = np.mean([row[t] for t in targets if t != source])
        lines.append(f"| {source} | " + " | ".join(f"{100 * row[t]:.1f}" for t in targets)
                     + f" | {100 * unseen:.1f} | {seconds[source]:.0f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", default="erm")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--scale", type=float, default=0.5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--encoder", default="torchvision:mobilenet_v2:imagenet")
    parser.add_argument("--backbone", default="mobilenet_v2:imagenet", help="NAME:WEIGHTS[:PATH]")
    parser.add_argument("--hparam", action="append", metavar="KEY=VALUE",
                        help="hyperparameter override for every method, e.g. clip_features=cached")
    parser.add_argument("--recipe", action="append", metavar="KEY=VALUE",
                        help="recipe override, e.g. data_path=per_sample or precision=bf16")
    args = parser.parse_args()
    name, weights, *path = args.backbone.split(":")
    backbone = BackboneSpec(name, weights, path[0] if path else None)
    from .data.roots import parse_assignments
    from .protocol import parse_value

    hparams = {k: parse_value(v) for k, v in parse_assignments(args.hparam, "--hparam").items()}
    recipe = {k: parse_value(v) for k, v in parse_assignments(args.recipe, "--recipe").items()}
    for method in args.methods.split(","):
        table, seconds = cross_domain(method, size=args.size, epochs=args.epochs, scale=args.scale, seed=args.seed,
                                      lr=args.lr, encoder=args.encoder, backbone=backbone, hparams=hparams,
                                      recipe=recipe)
        print(markdown(method, table, seconds))
        print(f"({args.size} px, {args.epochs} epochs, batch 32, lr {args.lr}, synth5 scale {args.scale}, "
              f"seed {args.seed}, encoder {args.encoder}, backbone {args.backbone}, hparams {hparams}, recipe {recipe})\n", flush=True)


if __name__ == "__main__":
    main()
