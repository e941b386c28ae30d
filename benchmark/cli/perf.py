"""`benchmark perf`: throughput of the training and evaluation paths on this machine."""

from __future__ import annotations

import argparse

from ..core.errors import BenchmarkError


def _cmd_perf(args: argparse.Namespace) -> int:
    from ..perf.throughput import main_perf

    overrides = {}
    if args.methods:
        overrides["methods"] = [m.strip() for m in args.methods.split(",")]
    if args.precisions:
        overrides["precisions"] = [p.strip() for p in args.precisions.split(",")]
    if args.eval_methods:
        overrides["eval_methods"] = [m.strip() for m in args.eval_methods.split(",")]
    if args.pack:
        try:
            overrides["pack"] = [int(n) for n in args.pack.split(",")]
        except ValueError:
            raise BenchmarkError(f"--pack {args.pack!r}: expected numbers of processes, e.g. 4,8") from None
    if args.fuse:
        try:
            overrides["fuse"] = [int(n) for n in args.fuse.split(",")]
        except ValueError:
            raise BenchmarkError(f"--fuse {args.fuse!r}: expected numbers of jobs, e.g. 1,2,4,8") from None
        if min(overrides["fuse"]) < 1:
            raise BenchmarkError(f"--fuse {args.fuse!r}: each must be 1 or more")
    if args.fuse_methods:
        overrides["fuse_methods"] = [m.strip() for m in args.fuse_methods.split(",")]
    if args.pack_fuse is not None:
        if args.pack_fuse < 1:
            raise BenchmarkError(f"--pack-fuse {args.pack_fuse}: must be 1 or more")
        overrides["pack_fuse"] = args.pack_fuse
    if args.compile:
        overrides["compile"] = True
    if args.recipes:
        overrides["recipes"] = True
    if args.variant_methods is not None:
        overrides["variant_methods"] = [m.strip() for m in args.variant_methods.split(",") if m.strip()]
    if args.loop_only:
        overrides["loop_only"] = True
    if args.pack_variants:
        overrides["pack_variants"] = loop_variants("--pack-variants", args.pack_variants)
    if args.loop_variants:
        overrides["loop_variants"] = loop_variants("--loop-variants", args.loop_variants)
    for key in ("size", "batch_size", "steps", "backbone", "encoder", "loop_steps", "workers", "matmul_n"):
        if getattr(args, key) is not None:
            overrides[key] = getattr(args, key)
    return main_perf(args.quick, overrides, args.device, args.json, args.scale_images)


def loop_variants(flag: str, value: str) -> list[str]:
    """The names in `value`, each a training-loop variant (benchmark.perf.loop.LOOP_VARIANTS)."""
    from ..perf.loop import LOOP_VARIANTS

    names = [v.strip() for v in value.split(",")]
    unknown = [v for v in names if v not in LOOP_VARIANTS]
    if unknown:
        raise BenchmarkError(f"{flag}: unknown {', '.join(unknown)} (known: {', '.join(LOOP_VARIANTS)})")
    return names


def add_parser(sub: argparse._SubParsersAction) -> None:
    perf = sub.add_parser("perf", help="measure training and evaluation throughput on this machine")
    perf.add_argument("--quick", action="store_true", help="a tiny configuration that runs in seconds (CI)")
    perf.add_argument("--methods", help="comma-separated methods (default erm,cafe,clip_ft)")
    perf.add_argument("--size", type=int, help="input size (default 224)")
    perf.add_argument("--batch-size", type=int, help="batch size (default 32)")
    perf.add_argument("--steps", type=int, help="timed training steps per method and data path (default 20)")
    perf.add_argument("--backbone", help="NAME:WEIGHTS, or several comma-separated, each timed in turn (default "
                      "resnet18:none; e.g. resnet18:none,timm:convnext_atto:none,openclip:ViT-B-32:none)")
    perf.add_argument("--encoder", help="frozen encoder spec (default openclip:ViT-B-32:random, the paper's "
                      "architecture; random weights time the same as the real ones)")
    perf.add_argument("--precisions", help="comma-separated recipe.precision values the harness path runs at "
                      "(default auto,bf16)")
    perf.add_argument("--eval-methods", help="comma-separated methods whose evaluation of five test sets is "
                      "timed cold and warm (default cafe,clip_probe)")
    perf.add_argument("--scale-images", type=int, default=0, metavar="N",
                      help="instead: train erm one epoch over N synthetic images at --size px and report the "
                      "peak resident memory (the first of --precisions is used)")
    perf.add_argument("--loop-steps", type=int, help="batches in the timed epoch of the training loop (default 100)")
    perf.add_argument("--workers", type=int, help="DataLoader workers of the per-sample path (default: one per core)")
    perf.add_argument("--matmul-n", type=int, help="side of the timed matmul (default 8192 on CUDA, else 2048)")
    perf.add_argument("--compile", action="store_true", help="also time the training loop with torch.compile")
    perf.add_argument("--recipes", action="store_true", help="also time the DG recipes (SAM, MixStyle, SWAD) as "
                      "training-loop variants: each one's epoch time against the default's")
    perf.add_argument("--pack", metavar="N,N,...", help="also time N processes training at once on the device")
    perf.add_argument("--fuse", metavar="K,K,...", help="also time K jobs trained as one fused model in one process "
                      "(e.g. 1,2,4,8), for each of --fuse-methods at each of --precisions")
    perf.add_argument("--fuse-methods", metavar="NAME,...", help="methods timed fused (default cafe)")
    perf.add_argument("--pack-fuse", type=int, metavar="K", help="jobs fused in each packed process (default 1)")
    perf.add_argument("--pack-variants", metavar="NAME,...", help="recipe variants of the packed runs "
                      "(benchmark.perf.loop.LOOP_VARIANTS; default: default)")
    perf.add_argument("--loop-variants", metavar="NAME,...", help="the training-loop variants timed for each of "
                      "--variant-methods (benchmark.perf.loop.LOOP_VARIANTS; default: all)")
    perf.add_argument("--variant-methods", metavar="NAME,...", help="methods whose training-loop variants are "
                      "timed (default cafe; empty for none)")
    perf.add_argument("--loop-only", action="store_true", help="only the training-loop variants and packing")
    perf.add_argument("--device", help="torch device (default cuda when present, else cpu)")
    perf.add_argument("--json", help="also write the report as JSON here")
    perf.set_defaults(func=_cmd_perf)
