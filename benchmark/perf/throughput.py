"""`benchmark perf`: measured throughput of the training and evaluation paths on this machine.

For each method it times training steps on two data paths:
- the common per-sample path (benchmark.training.per_sample): a DataLoader whose workers decode each image
  file and run the paper's per-sample torchvision transforms every step; spec precision
  ("auto"), contiguous layout, as published FER code runs;
- the harness path: batches read from the decoded-image cache, augmented batched on the device
  (benchmark.training.augment), channels_last, once per precision in `precisions` (benchmark.training.numerics).
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
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..models.backbones import BackboneSpec
from ..data import DATASETS, decode_split
from ..data.synth5 import DOMAINS
from ..models.encoders import EncoderSpec, build_encoder
from ..core.errors import BenchmarkError
from ..training.numerics import Numerics, to_device_batch
from ..training.features import FeatureCache
from ..core.labels import CLASSES
from ..training.method import Batch
from ..training.per_sample import PerSampleDataset
from ..training.recipe import Recipe
from ..training.trainer import epoch_batches, pick_device


@dataclass
class PerfConfig:
    methods: list[str] = field(default_factory=lambda: ["erm", "cafe", "clip_ft"])
    size: int = 224
    batch_size: int = 32
    steps: int = 20
    warmup: int = 2
    scale: float = 0.5  # synth5 size
    # The paper's CLIP architecture with random weights: the same arithmetic and time as OpenAI's
    # weights, and nothing to download. Timing only; accuracy needs the real weights.
    encoder: str = "openclip:ViT-B-32:random"
    backbone: str = "resnet18:none"
    # The harness path runs once per precision (benchmark.training.numerics); the per-sample path runs at
    # "auto" with the contiguous layout, as the common FER code does.
    precisions: list[str] = field(default_factory=lambda: ["auto", "bf16"])
    # CAFE runs its trained backbone on every test image, which no cache removes; clip_probe
    # predicts from the encoder features alone, so it shows what the caches remove.
    eval_methods: list[str] = field(default_factory=lambda: ["cafe", "clip_probe"])
    workers: int = 0  # DataLoader workers of the per-sample path; 0 = one per CPU core
    matmul_n: int = 0  # side of the timed matmul; 0 = 8192 on CUDA (a smaller one reads low there), else 2048
    # The real training loop (benchmark.perf.loop): batches per timed epoch, the methods whose
    # feeding variants are timed, whether a compiled run is timed too, and the numbers of
    # processes packed on the device (each fitting `pack_method`).
    loop_steps: int = 100
    variant_methods: list[str] = field(default_factory=lambda: ["cafe"])
    loop_variants: list[str] | None = None  # names in LOOP_VARIANTS timed for each of them (None: all)
    compile: bool = False
    recipes: bool = False  # also time the DG recipes (SAM, MixStyle, SWAD) as loop variants
    pack: list[int] = field(default_factory=list)
    pack_method: str = "cafe"
    pack_variants: list[str] = field(default_factory=lambda: ["default"])  # names in benchmark.perf.loop.LOOP_VARIANTS
    loop_only: bool = False  # only the loop variants and packing (no staged timing, per-sample path, evaluation)
    # Fused training (benchmark.training.fused): K jobs in one process, for each of `fuse`, each
    # of `fuse_methods` at each of `precisions`; `pack_fuse` jobs fused in every packed process.
    fuse: list[int] = field(default_factory=list)
    fuse_methods: list[str] = field(default_factory=lambda: ["cafe"])
    pack_fuse: int = 1


QUICK = dict(methods=["erm", "cafe", "clip_ft"], size=32, batch_size=8, steps=3, warmup=1, scale=0.02,
             encoder="torchvision:mobilenet_v2:imagenet", backbone="mobilenet_v2:imagenet", workers=1,
             matmul_n=256, loop_steps=3)


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


def write_files(samples, folder: Path) -> list[Path]:
    """The split's images as PNG files in class folders (an imagefolder layout); not timed."""
    files = []
    for i, (pixels, label) in enumerate(zip(samples.pixels, samples.labels)):
        path = folder / CLASSES[label] / f"{i:06d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(path)
        files.append(path)
    return files


def matmul_flops(device: torch.device, n: int, repeats: int = 5, dtype: torch.dtype = torch.float32,
                 trials: int = 3) -> float:
    """The device's dense matmul rate: the best of `trials` timings (a single one reads low when
    the clock or another process interferes, which inflates every efficiency figure)."""
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    best = 0.0
    for _ in range(trials):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        for _ in range(repeats):
            a @ b
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = max(best, 2 * n**3 * repeats / (time.perf_counter() - start))
    return best


def timing_batch(method, x: torch.Tensor, y: torch.Tensor) -> Batch:
    """A training Batch of `x`, `y` (the timed loops know no sample rows: they index 0..B-1)."""
    return method.with_extras(Batch(method.numerics.layout(x), y, np.arange(len(y))))


def step_flops(method, x: torch.Tensor, y: torch.Tensor) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, method.numerics.autocast():
        loss, _ = method.training_step(timing_batch(method, x, y))
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
            with method.numerics.autocast():
                loss, _ = method.training_step(timing_batch(method, x, y))
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


class Stages:
    """What a long measurement is doing, on stderr: each stage as it starts, its number among all,
    the time so far and, from the stages done, a rough estimate of the time left."""

    def __init__(self, total: int, out=None):
        self.total, self.done, self.out = total, 0, out or sys.stderr
        self.start = time.perf_counter()

    def __call__(self, name: str) -> None:
        elapsed = time.perf_counter() - self.start
        left = f", about {elapsed / self.done * (self.total - self.done):.0f} s left" if self.done else ""
        self.done += 1
        print(f"[perf {self.done}/{self.total}] {name} ({elapsed:.0f} s so far{left})", file=self.out, flush=True)


def run_perf(config: PerfConfig, work: Path, device_name: str | None = None) -> dict:
    from ..training.method import Components
    from ..training.plugins import build_method

    per_method = 1 if config.loop_only else 2 + len(config.precisions)
    stage = Stages(3 + per_method * len(config.methods) + 1 + (0 if config.loop_only else len(config.precisions)))
    stage("building the encoder and decoding the images")
    device = pick_device(device_name)
    torch.manual_seed(0)
    np.random.seed(0)
    config = replace(config, workers=config.workers or os.cpu_count() or 1,
                     matmul_n=config.matmul_n or (8192 if device.type == "cuda" else 2048))
    name, _, weights = config.backbone.rpartition(":")
    report: dict = {"config": asdict(config), "device": str(device), "methods": {}}
    encoder = build_encoder(EncoderSpec(config.encoder))
    samples = DATASETS.get("synth5/studio").load(None, "train", scale=config.scale)
    cached = decode_split(samples, config.size, cache_dir=work / "cache")
    write_files(samples, work / "files" / "train")
    file_samples = DATASETS.get("imagefolder").load(work / "files", "train")
    stage(f"the device's peak: a {config.matmul_n}-square matmul in fp32")
    report["flops_per_s_measured"] = matmul_flops(device, config.matmul_n)
    gen = torch.Generator(device="cpu").manual_seed(0)
    aug_gen = torch.Generator(device=device).manual_seed(1)

    def harness_batches(method):
        """The trainer's own cache data path (trainer.epoch_batches), over random rows."""
        recipe = Recipe(batch_size=config.batch_size, progress=False)
        while True:
            order = torch.randint(0, len(cached), (64 * config.batch_size,), generator=gen).numpy()
            for index, x, _ in epoch_batches(method, cached, order, recipe, device, gen, aug_gen):
                yield x, to_device_batch(cached.labels[index], device)

    def per_sample_batches():
        dataset = PerSampleDataset(file_samples, np.arange(len(file_samples)), config.size)
        labels = torch.from_numpy(file_samples.labels)
        loader = torch.utils.data.DataLoader(dataset,
                                             batch_size=config.batch_size, shuffle=True, drop_last=True,
                                             num_workers=config.workers, persistent_workers=config.workers > 0,
                                             pin_memory=device.type == "cuda")
        while True:
            for x, rows in loader:
                yield x.to(device, non_blocking=True), labels[rows].to(device, non_blocking=True)

    stage("the same matmul in bf16")
    report["flops_per_s_measured_bf16"] = matmul_flops(device, config.matmul_n, dtype=torch.bfloat16)
    for method_name in config.methods:
        stage(f"{method_name}: FLOPs of one training step")
        components = Components(BackboneSpec(name, weights), encoder, FeatureCache(work / "features"))
        method = build_method(method_name, components=components)
        row: dict = {}
        # The common code's run: per-sample data path, spec precision, contiguous layout.
        method.build(device, config.size, Numerics.resolve(device, "auto"))
        method.train_mode(True)
        x, y = next(harness_batches(method))
        row["train_flops_per_image"] = step_flops(method, x, y) / len(y)
        report["methods"][method_name] = row
        if config.loop_only:
            continue
        stage(f"{method_name}: {config.steps} steps on the per-sample data path")
        row["per_sample"] = time_training(method, per_sample_batches(), device, config.steps, config.warmup)
        for precision in config.precisions:
            stage(f"{method_name}: {config.steps} steps on the cache path, {precision}")
            numerics = Numerics.resolve(device, precision, channels_last=True)
            method.build(device, config.size, numerics)
            method.train_mode(True)
            timing = time_training(method, harness_batches(method), device, config.steps, config.warmup)
            peak = report["flops_per_s_measured_bf16" if numerics.autocast_dtype else "flops_per_s_measured"]
            timing["speedup_vs_per_sample"] = timing["images_per_s"] / row["per_sample"]["images_per_s"]
            timing["efficiency"] = row["train_flops_per_image"] * timing["images_per_s"] / peak
            row[f"harness_{precision}"] = timing
    stage(f"the training loop: {', '.join(config.methods)}, {config.loop_steps} batches an epoch")
    report["loop"] = time_loop(config, encoder, device, work)
    report["eval"] = {}
    for precision in ([] if config.loop_only else config.precisions):
        stage(f"evaluation of five test sets, cold and warm, {precision}")
        report["eval"][precision] = time_eval(config, encoder, name, weights, device, work,
                                              Numerics.resolve(device, precision, channels_last=True), cached)
    report["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return report


def time_loop(config: PerfConfig, encoder, device: torch.device, work: Path) -> dict:
    """The trainer's own loop (benchmark.perf.loop): every method at every precision with the
    default recipe and the per-sample path through the same loop (unless `loop_only`); the
    variants of `variant_methods`; `pack` processes at once for each of `pack_variants`.
    A variant that fails is recorded with its error; the others still run."""
    from .loop import COMPILED_VARIANTS, LOOP_VARIANTS, RECIPE_VARIANTS, LoopSpec, packed_throughput, timed_fit

    def spec(method: str, precision: str, fuse: int = 1, **changes) -> LoopSpec:
        return LoopSpec(method, config.encoder, config.backbone, config.size, config.batch_size, config.loop_steps,
                        config.scale, str(work / "cache"), str(device), precision, recipe_changes=changes, fuse=fuse)

    def attempt(loop_spec: LoopSpec) -> dict:
        try:
            return timed_fit(loop_spec, encoder)
        except Exception as exc:  # noqa: BLE001 - one failing variant is a finding, not the end of the report
            return {"error": f"{type(exc).__name__}: {exc}"}

    out: dict = {"methods": {}, "variants": {}, "pack": [], "fuse": []}
    for method in [] if config.loop_only else config.methods:
        row = {p: timed_fit(spec(method, p), encoder) for p in config.precisions}
        # The common code's run through the same loop: files decoded in `workers` DataLoader
        # processes, "auto" precision, contiguous layout.
        per_sample = replace(spec(method, "auto", data_path="per_sample", loader_workers=config.workers),
                             channels_last=False, dataset="imagefolder", root=str(work / "files"))
        row["per_sample"] = timed_fit(per_sample, encoder)
        for p in config.precisions:
            row[p]["speedup_vs_per_sample"] = row[p]["images_per_s"] / row["per_sample"]["images_per_s"]
        out["methods"][method] = row
    chosen = LOOP_VARIANTS if config.loop_variants is None else {v: LOOP_VARIANTS[v] for v in config.loop_variants}
    variants = {**chosen, **(COMPILED_VARIANTS if config.compile else {}), **(RECIPE_VARIANTS if config.recipes else {})}
    for method in config.variant_methods:
        out["variants"][method] = {v: attempt(spec(method, config.precisions[0], **changes))
                                   for v, changes in variants.items()}
    for method in config.fuse_methods if config.fuse else []:
        for precision in config.precisions:
            for k in config.fuse:
                out["fuse"].append({"method": method, "precision": precision, "fuse": k,
                                    **attempt(spec(method, precision, fuse=k))})
    for variant in config.pack_variants:
        for processes in config.pack:
            out["pack"].append({"variant": variant, **packed_throughput(
                spec(config.pack_method, config.precisions[0], fuse=config.pack_fuse, **LOOP_VARIANTS[variant]),
                processes)})
    return out


def time_eval(config: PerfConfig, encoder, name: str, weights: str, device: torch.device, work: Path,
              numerics: Numerics, train_data) -> dict:
    """Evaluation of five test sets by each of `config.eval_methods`: cold (decode the files,
    run the encoder) vs warm (decoded images and encoder features read from the disk caches).

    Each run is split into decoding (or opening the cached split), encoder forwards, and the rest
    of the prediction (the trained model, the head, reading cached features): what a warm cache
    can remove is the first two, so cold / rest is what removing exactly those would give.
    """
    from ..training.method import Components, MemoryLog
    from ..training.plugins import build_method
    from ..training.trained_method import TrainedMethod

    roots = {domain: work / "eval" / domain for domain in DOMAINS}
    for domain, root in roots.items():
        if not root.exists():
            write_files(DATASETS.get(f"synth5/{domain}").load(None, "test", scale=config.scale), root / "test")
    features = FeatureCache(work / "eval-features")
    report = {}
    for method_name in config.eval_methods:
        components = Components(BackboneSpec(name, weights), encoder, features)
        method = build_method(method_name, components=components)
        if isinstance(method, TrainedMethod):
            method.build(device, config.size, numerics)  # untrained weights: the same arithmetic
        else:
            # A probe needs a fitted classifier before it can predict; fitted here, not timed.
            method.fit(train_data, recipe=Recipe(precision=numerics.precision, seed=0, progress=False),
                       device=device, log=MemoryLog())
        # One untimed pass first, so neither run pays for first-call kernel set-up (oneDNN, cuDNN).
        first = DATASETS.get("imagefolder").load(next(iter(roots.values())), "test")
        method.predict(decode_split(first, config.size, cache_dir=work / "eval-cache"))
        timings: dict = {}
        shutil.rmtree(work / "eval-cache", ignore_errors=True)  # cold means no decoded images either
        shutil.rmtree(work / "eval-features", ignore_errors=True)
        timer = Timer(device)
        hooks = _encoder_hooks(encoder, timer)
        try:
            for run in ("cold", "warm"):
                features.forget()  # warm means "from the disk caches", not from this process's memory
                timer.totals.clear()
                start = time.perf_counter()
                for domain, root in roots.items():
                    t0 = time.perf_counter()
                    data = decode_split(DATASETS.get("imagefolder").load(root, "test"), config.size,
                                        cache_dir=work / "eval-cache")
                    timer.add("decode", time.perf_counter() - t0)
                    method.predict(data)
                total = time.perf_counter() - start
                decode, enc = timer.totals["decode"], timer.totals.get("encoder", 0.0)
                timings[run] = {"total_s": total, "decode_s": decode, "encoder_s": enc,
                                "rest_s": total - decode - enc}
        finally:
            for h in hooks:
                h.remove()
        timings["speedup"] = timings["cold"]["total_s"] / timings["warm"]["total_s"]
        rest = timings["cold"]["rest_s"]
        timings["cold_over_rest"] = timings["cold"]["total_s"] / rest if rest > 0 else float("inf")
        report[method_name] = timings
    return report


def format_report(report: dict) -> str:
    from tabulate import tabulate

    if "scale" in report:
        r = report["scale"]
        return (f"device {report['device']}; one epoch of erm ({r['backbone']}, {r['precision']}) over "
                f"{r['images']:,} synthetic images at {r['size']} px: cache {r['cache_mb']:.0f} MB built in "
                f"{r['build_s']:.1f} s; epoch {r['epoch_s']:.1f} s ({r['images_per_s']:.1f} img/s); "
                f"peak resident memory while training {r['peak_rss_mb']:.0f} MB"
                f"{'' if r['peak_rss_training_only'] else ' (process lifetime: the peak could not be reset)'}; "
                f"while building the split {r['peak_rss_mb_build']:.0f} MB")
    rows = []
    paths = ["per_sample"] + [f"harness_{p}" for p in report["config"]["precisions"]]
    for name, m in report["methods"].items():
        for path in [p for p in paths if p in m]:
            r = m[path]
            rows.append([name, path, f"{r['images_per_s']:.1f}", f"{1000 * r['data_s']:.1f}",
                         f"{1000 * r['encoder_s']:.1f}", f"{1000 * r['backbone_fwd_bwd_s']:.1f}",
                         f"{1000 * r['optimizer_s']:.1f}", f"{100 * r['data_wait_share']:.0f}%",
                         f"{r['speedup_vs_per_sample']:.2f}x" if "speedup_vs_per_sample" in r else "1.00x",
                         f"{100 * r['efficiency']:.1f}%" if "efficiency" in r else ""])
    lines = [f"device {report['device']}; config {json.dumps(report['config'])}",
             f"measured matmul rate: fp32 {report['flops_per_s_measured'] / 1e9:.1f} GFLOP/s, "
             f"bf16 {report['flops_per_s_measured_bf16'] / 1e9:.1f} GFLOP/s",
             tabulate(rows, headers=["method", "data path", "img/s", "data ms", "encoder ms",
                                     "backbone f+b ms", "optim ms", "data wait", "vs per-sample",
                                     "efficiency"]), ""]
    for name, m in report["methods"].items():
        lines.append(f"{name}: {m['train_flops_per_image'] / 1e9:.3f} GFLOP per training image "
                     "(efficiency = achieved / measured matmul rate of the precision used)")
    eval_rows = []
    for precision, by_method in report["eval"].items():
        for method_name, e in by_method.items():
            for run in ("cold", "warm"):
                r = e[run]
                eval_rows.append([method_name, precision, run, f"{r['total_s']:.2f}", f"{r['decode_s']:.2f}",
                                  f"{r['encoder_s']:.2f}", f"{r['rest_s']:.2f}",
                                  f"{e['speedup']:.2f}x" if run == "warm" else "",
                                  f"{e['cold_over_rest']:.2f}x" if run == "warm" else ""])
    lines += ["", "evaluation of 5 test sets (warm = decoded images and encoder features from the disk caches;"
              " cold/rest = the speed-up if a cache removed exactly cold's decoding and encoder time)",
              tabulate(eval_rows, headers=["method", "precision", "run", "total s", "decode s", "encoder s",
                                           "rest s", "speed-up", "cold/rest"]), ""]
    lines += format_loop(report)
    lines.append(f"peak resident memory {report['peak_rss_mb']:.0f} MB")
    return "\n".join(lines)


def format_loop(report: dict) -> list[str]:
    from tabulate import tabulate

    loop = report.get("loop")
    if not loop:
        return []
    rows = []
    for method, row in loop["methods"].items():
        for path, r in row.items():
            rows.append([method, path, f"{r['images_per_s']:.1f}", f"{r['warmup_epoch_s']:.2f}",
                         f"{r['speedup_vs_per_sample']:.2f}x" if "speedup_vs_per_sample" in r else ""])
    for method, variants in loop["variants"].items():
        for variant, r in variants.items():
            if "error" in r:
                rows.append([method, f"variant: {variant}", f"FAILED: {r['error'][:150]}", "", ""])
                continue
            base = variants.get("default", {})
            cost = (f"{r['epoch_s'] / base['epoch_s']:.2f}x default's epoch"
                    if variant != "default" and "epoch_s" in base else "")
            rows.append([method, f"variant: {variant}", f"{r['images_per_s']:.1f}", f"{r['warmup_epoch_s']:.2f}", cost])
    lines = ["training loop (trainer.fit, timed second epoch; no synchronisation but the trainer's own)",
             tabulate(rows, headers=["method", "path / precision", "img/s", "warm-up epoch s", "vs per-sample / cost"]),
             ""]
    fuse_rows = []
    for r in loop.get("fuse", []):
        alone = next((o for o in loop["fuse"] if o["method"] == r["method"] and o["precision"] == r["precision"]
                      and o["fuse"] == 1 and "error" not in o), None)
        if "error" in r:
            fuse_rows.append([r["method"], r["precision"], r["fuse"], f"FAILED: {r['error'][:150]}", ""])
            continue
        fuse_rows.append([r["method"], r["precision"], r["fuse"], f"{r['images_per_s']:.1f}",
                          f"{r['images_per_s'] / alone['images_per_s']:.2f}x" if alone else ""])
    if fuse_rows:
        lines += ["fused training (K jobs as one model in one process; img/s of all K together)",
                  tabulate(fuse_rows, headers=["method", "precision", "K", "img/s", "vs K = 1"]), ""]
    bf16 = report["flops_per_s_measured_bf16"]
    pack_method = report["config"]["pack_method"]
    flops = report["methods"].get(pack_method, {}).get("train_flops_per_image")
    for r in loop["pack"]:
        if "error" in r:
            lines.append(f"{r['processes']} packed {pack_method} processes ({r['variant']}): FAILED ({r['error']})")
            continue
        efficiency = f", {100 * flops * r['images_per_s'] / bf16:.1f}% of the bf16 matmul rate" if flops else ""
        fused = f", {r['fuse']} jobs fused in each" if r.get("fuse", 1) > 1 else ""
        lines.append(f"{r['processes']} packed {pack_method} processes ({r['variant']}{fused}): {r['images_per_s']:.0f} "
                     f"img/s together{efficiency}")
    return lines


def main_perf(quick: bool, overrides: dict, device: str | None, json_path: str | None,
              scale_images: int = 0) -> int:
    if scale_images < 0:
        raise BenchmarkError(f"--scale-images {scale_images}: must be a positive number of images")
    config = PerfConfig(**{**(QUICK if quick else {}), **overrides})
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    # Scratch files (image files, caches, the large split) go to a temporary folder, removed after.
    with tempfile.TemporaryDirectory(prefix="benchmark-perf-") as work:
        if scale_images:
            from .scale import scale_check

            dev = pick_device(device)
            report = {"device": str(dev), "scale": scale_check(
                scale_images, config.size, config.backbone, config.precisions[0], config.batch_size, dev, Path(work))}
        elif "," in config.backbone:  # each backbone in turn: images/s and memory per method x backbone
            report = {"backbones": {}}
            for backbone in (b.strip() for b in config.backbone.split(",")):
                report["backbones"][backbone] = run_perf(replace(config, backbone=backbone), Path(work) / backbone, device)
        else:
            report = run_perf(config, Path(work), device)
    if "backbones" in report:
        print("\n\n".join(f"== backbone {b}\n{format_report(r)}" for b, r in report["backbones"].items()))
    else:
        print(format_report(report))
    if json_path:
        Path(json_path).write_text(json.dumps(report, indent=1))
        print(f"wrote {json_path}")
    return 0
