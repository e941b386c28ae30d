"""`benchmark perf`: measured throughput of the training and evaluation paths on this machine.

For each method it times training steps two ways at the same recipe:
- the harness path: batches sliced from the memory-mapped decoded-image cache, augmented batched
  on the device (benchmark.augment);
- the common per-sample path: a DataLoader whose workers decode each image file and run the
  paper's per-sample torchvision transforms every step.
Each step is split into stages (data, frozen-encoder forward, backbone forward + backward,
optimizer) and the share of time spent waiting for data. It counts the FLOPs of one training
step (torch.utils.flop_counter), times a dense matmul to measure the device's FLOP/s, and
reports achieved / measured as the efficiency. It also times evaluation of five test sets cold
(decode the image files, compute encoder features) and warm (both caches filled), and the peak
resident memory.
"""

from __future__ import annotations

import json
import os
import resource
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .augment import IMAGENET_MEAN, IMAGENET_STD, NOISE_STD, PAPER, augment
from .backbones import BackboneSpec
from .data import DATASETS, decode_split
from .data.synth5 import DOMAINS
from .encoders import EncoderSpec, build_encoder
from .features import FeatureCache
from .labels import CLASSES
from .trainer import load_batch, pick_device


@dataclass
class PerfConfig:
    methods: list[str] = field(default_factory=lambda: ["erm", "cafe", "clip_ft"])
    size: int = 224
    batch_size: int = 32
    steps: int = 20
    warmup: int = 2
    scale: float = 0.5  # synth5 size
    encoder: str = "torchvision:mobilenet_v2:imagenet"
    backbone: str = "resnet18:none"
    workers: int = 2
    matmul_n: int = 2048


QUICK = dict(methods=["erm", "cafe", "clip_ft"], size=32, batch_size=8, steps=3, warmup=1, scale=0.02,
             backbone="mobilenet_v2:imagenet", workers=1, matmul_n=256)


class Timer:
    def __init__(self, device: torch.device):
        self.device = device
        self.totals: dict[str, float] = {}

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def add(self, key: str, seconds: float) -> None:
        self.totals[key] = self.totals.get(key, 0.0) + seconds


def _encoder_hooks(encoder, timer: Timer):
    """Forward hooks that add the encoder's forward time to timer['encoder']."""
    state = {}

    def pre(module, args):
        timer.sync()
        state["t"] = time.perf_counter()

    def post(module, args, out):
        timer.sync()
        timer.add("encoder", time.perf_counter() - state["t"])

    return [encoder.register_forward_pre_hook(pre), encoder.register_forward_hook(post)]


class PerSampleDataset(torch.utils.data.Dataset):
    """The common FER data path: decode the file and transform one sample at a time, every epoch."""

    def __init__(self, files: list[Path], labels: np.ndarray, size: int):
        from torchvision import transforms

        self.files, self.labels = files, labels
        self.transform = transforms.Compose([
            transforms.ToPILImage(), transforms.Resize((size, size)), transforms.ToTensor(),
            transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD), transforms.RandomHorizontalFlip(),
            transforms.RandomErasing(scale=(0.02, 0.25))])

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        img = np.asarray(Image.open(self.files[i]).convert("RGB"))
        if np.random.rand() < 0.5:  # Gaussian noise on the uint8 image, as the authors' loaders do
            img = np.clip(img + np.random.normal(0, NOISE_STD, img.shape), 0, 255).astype(np.uint8)
        return self.transform(img), int(self.labels[i])


def write_files(samples, folder: Path) -> list[Path]:
    """The split's images as PNG files in class folders (an imagefolder layout); not timed."""
    files = []
    for i, (pixels, label) in enumerate(zip(samples.pixels, samples.labels)):
        path = folder / CLASSES[label] / f"{i:06d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(path)
        files.append(path)
    return files


def matmul_flops(device: torch.device, n: int, repeats: int = 5) -> float:
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    a @ b
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return 2 * n**3 * repeats / (time.perf_counter() - start)


def step_flops(method, x: torch.Tensor, y: torch.Tensor) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        loss, _ = method.training_step(x, y)
        loss.backward()
    method.model.zero_grad(set_to_none=True)
    return float(counter.get_total_flops())


def time_training(method, batches, device: torch.device, steps: int, warmup: int) -> dict[str, float]:
    """Run warmup + steps training steps from the `batches` iterator of (x, y) makers."""
    optimizer = torch.optim.Adam(method.param_groups(), lr=1e-4)
    timer = Timer(device)
    hooks = _encoder_hooks(method.components.encoder, timer) if method.components.encoder is not None else []
    images = 0
    try:
        for step in range(warmup + steps):
            if step == warmup:
                timer.totals.clear()
                start = time.perf_counter()
            timer.sync()
            t0 = time.perf_counter()
            x, y = next(batches)
            timer.sync()
            t1 = time.perf_counter()
            loss, _ = method.training_step(x, y)
            loss.backward()
            timer.sync()
            t2 = time.perf_counter()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            timer.sync()
            t3 = time.perf_counter()
            timer.add("data", t1 - t0)
            timer.add("step", t2 - t1)
            timer.add("optimizer", t3 - t2)
            if step >= warmup:
                images += len(y)
        total = time.perf_counter() - start
    finally:
        for h in hooks:
            h.remove()
    enc = timer.totals.get("encoder", 0.0)
    return {"images_per_s": images / total, "data_s": timer.totals["data"] / steps, "encoder_s": enc / steps,
            "backbone_fwd_bwd_s": (timer.totals["step"] - enc) / steps, "optimizer_s": timer.totals["optimizer"] / steps,
            "data_wait_share": timer.totals["data"] / total}


def run_perf(config: PerfConfig, device_name: str | None = None) -> dict:
    from methods import Components, build_method

    device = pick_device(device_name)
    torch.manual_seed(0)
    np.random.seed(0)
    name, weights = config.backbone.split(":")
    work = Path(tempfile.mkdtemp(prefix="benchmark-perf-"))
    report: dict = {"config": asdict(config), "device": str(device), "methods": {}}
    encoder = build_encoder(EncoderSpec(config.encoder))
    samples = DATASETS.get("synth5/studio").load(None, "train", scale=config.scale)
    cached = decode_split(samples, config.size, cache_dir=work / "cache")
    files = write_files(samples, work / "files" / "train")
    report["flops_per_s_measured"] = matmul_flops(device, config.matmul_n)
    gen = torch.Generator(device="cpu").manual_seed(0)
    aug_gen = torch.Generator(device=device).manual_seed(1)

    def harness_batches():
        while True:
            index = torch.randint(0, len(cached), (config.batch_size,), generator=gen).numpy()
            images, labels = load_batch(cached, index, device)
            yield augment(images, PAPER, aug_gen), labels

    def per_sample_batches():
        loader = torch.utils.data.DataLoader(PerSampleDataset(files, samples.labels, config.size),
                                             batch_size=config.batch_size, shuffle=True, drop_last=True,
                                             num_workers=config.workers, persistent_workers=config.workers > 0,
                                             pin_memory=device.type == "cuda")
        while True:
            for x, y in loader:
                yield x.to(device, non_blocking=True), y.to(device, non_blocking=True)

    for method_name in config.methods:
        components = Components(BackboneSpec(name, weights), encoder, FeatureCache(work / "features"))
        method = build_method(method_name, components=components)
        method.build(device, config.size)
        method.train_mode(True)
        x, y = next(harness_batches())
        flops = step_flops(method, x, y) / len(y)
        harness = time_training(method, harness_batches(), device, config.steps, config.warmup)
        per_sample = time_training(method, per_sample_batches(), device, config.steps, config.warmup)
        report["methods"][method_name] = {
            "train_flops_per_image": flops, "harness": harness, "per_sample": per_sample,
            "speedup": harness["images_per_s"] / per_sample["images_per_s"],
            "efficiency": flops * harness["images_per_s"] / report["flops_per_s_measured"]}
    report["eval"] = time_eval(config, encoder, name, weights, device, work)
    report["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return report


def time_eval(config: PerfConfig, encoder, name: str, weights: str, device: torch.device, work: Path) -> dict:
    """CAFE's evaluation of five test sets: cold (decode files, encode) vs warm (both caches)."""
    from methods import Components, build_method

    roots = {}
    for domain in DOMAINS:
        samples = DATASETS.get(f"synth5/{domain}").load(None, "test", scale=config.scale)
        roots[domain] = work / "eval" / domain
        write_files(samples, roots[domain] / "test")
    components = Components(BackboneSpec(name, weights), encoder, FeatureCache(work / "eval-features"))
    method = build_method("cafe", components=components)
    method.build(device, config.size)
    timings = {}
    for run in ("cold", "warm"):
        components.features.forget()  # warm means "from the disk caches", not from this process's memory
        start = time.perf_counter()
        for domain, root in roots.items():
            data = decode_split(DATASETS.get("imagefolder").load(root, "test"), config.size,
                                cache_dir=work / "eval-cache")
            method.predict(data)
        timings[f"{run}_s"] = time.perf_counter() - start
    timings["speedup"] = timings["cold_s"] / timings["warm_s"]
    return timings


def format_report(report: dict) -> str:
    from tabulate import tabulate

    rows = []
    for name, m in report["methods"].items():
        for path in ("harness", "per_sample"):
            r = m[path]
            rows.append([name, path, f"{r['images_per_s']:.1f}", f"{1000 * r['data_s']:.1f}",
                         f"{1000 * r['encoder_s']:.1f}", f"{1000 * r['backbone_fwd_bwd_s']:.1f}",
                         f"{1000 * r['optimizer_s']:.1f}", f"{100 * r['data_wait_share']:.0f}%"])
    lines = [f"device {report['device']}; config {json.dumps(report['config'])}",
             tabulate(rows, headers=["method", "data path", "img/s", "data ms", "encoder ms",
                                     "backbone f+b ms", "optim ms", "data wait"]), ""]
    for name, m in report["methods"].items():
        lines.append(f"{name}: harness/per-sample {m['speedup']:.2f}x; {m['train_flops_per_image'] / 1e9:.3f} "
                     f"GFLOP per training image; efficiency {100 * m['efficiency']:.1f}% of the measured "
                     f"{report['flops_per_s_measured'] / 1e9:.1f} GFLOP/s matmul rate")
    e = report["eval"]
    lines.append(f"evaluation of 5 test sets (cafe): cold {e['cold_s']:.2f}s, warm {e['warm_s']:.2f}s "
                 f"({e['speedup']:.2f}x)")
    lines.append(f"peak resident memory {report['peak_rss_mb']:.0f} MB")
    return "\n".join(lines)


def main_perf(quick: bool, overrides: dict, device: str | None, json_path: str | None) -> int:
    config = PerfConfig(**{**(QUICK if quick else {}), **overrides})
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    report = run_perf(config, device)
    print(format_report(report))
    if json_path:
        Path(json_path).write_text(json.dumps(report, indent=1))
        print(f"wrote {json_path}")
    return 0
