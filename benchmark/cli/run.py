"""`benchmark run`: expand a protocol into jobs and run those not FINISHED."""

from __future__ import annotations

import argparse
import sys

from ..core.errors import BenchmarkError


def derived_seeds(seeds: list[int], n: int) -> list[int]:
    """`n` seeds: the protocol's first, then the integers after its largest (deterministic, so a
    later --num-seeds 5 reuses every job of an earlier --num-seeds 3)."""
    if n < 1:
        raise BenchmarkError(f"--num-seeds {n}: must be 1 or more")
    out = list(dict.fromkeys(seeds))[:n]
    nxt = max(out) + 1 if out else 0
    while len(out) < n:
        out.append(nxt)
        nxt += 1
    return out


def with_sweep(protocol, assignment: str):
    """The protocol with `--sweep KEY=v1,v2,...` added to its sweep grid (values parse as TOML)."""
    import dataclasses

    from ..jobs.protocol import parse_value

    key, sep, values = assignment.partition("=")
    if not sep or not values:
        raise BenchmarkError(f"--sweep {assignment!r}: expected KEY=v1,v2,... (e.g. hparams.cafe.sep_weight=0.5,1.5,5)")
    sweep = protocol.sweep_spec().with_grid(key.strip(), [parse_value(v.strip()) for v in values.split(",")])
    table = {**sweep.grid, **({"random": sweep.random, "seed": sweep.seed, "ranges": sweep.ranges} if sweep.random else {})}
    changed = dataclasses.replace(protocol, sweep=table)
    for point in sweep.points():
        changed.at(point)  # every value checked before any work
    return changed


def _cmd_run(args: argparse.Namespace) -> int:
    from ..data.roots import parse_assignments
    from ..run.executors import ExecutorOptions
    from ..run.grid import ResumeOptions, run_grid
    from ..jobs.plan import plan_from
    from ..jobs.protocol import load_protocol
    from ..store import open_store

    overrides = parse_assignments(args.set, "--set")
    if args.seeds:
        overrides["seeds"] = "[" + args.seeds + "]"
    if args.sources:
        overrides["sources"] = "[" + ",".join(f'"{s.strip()}"' for s in args.sources.split(",")) + "]"
    if args.backbones:
        overrides["backbones"] = "[" + ",".join(f'"{b.strip()}"' for b in args.backbones.split(",")) + "]"
    protocol = load_protocol(args.protocol, overrides)
    for assignment in args.sweep or []:
        protocol = with_sweep(protocol, assignment)
    if args.num_seeds is not None:
        if args.seeds:
            raise BenchmarkError("--seeds and --num-seeds: give one of them")
        protocol.seeds = derived_seeds(protocol.seeds, args.num_seeds)
    methods = [m.strip() for m in args.methods.split(",")] if args.methods else protocol.methods
    plan = plan_from(protocol, args.data_root, parse_assignments(args.dataset_path, "--dataset-path"))
    slurm = None
    if args.executor == "slurm" or args.slurm or args.slurm_config:
        from ..run.executors.slurm import slurm_options

        slurm = slurm_options(args.slurm_config, args.slurm)
    options = ExecutorOptions(args.workers, args.jobs_per_gpu, args.ray_address, args.fuse, slurm)
    return run_grid(protocol, methods, plan, store=open_store(args.tracking_uri), executor=args.executor,
                    options=options, dry_run=args.dry_run, device=args.device, command=" ".join(sys.argv),
                    threads=args.threads, system_metrics_s=args.system_metrics_every,
                    resume=ResumeOptions(not args.no_resume, args.resume_dir, mid_epoch_s=args.resume_mid_epoch,
                                         **({} if args.resume_every is None else {"every_s": args.resume_every})))


def add_parser(sub: argparse._SubParsersAction) -> None:
    run = sub.add_parser("run", help="run methods on a protocol's source x target grid, logging to MLflow")
    run.add_argument("--protocol", default="synth5", help="protocol name in protocols/ or a .toml path (default synth5)")
    run.add_argument("--methods", help="comma-separated method names (default: the protocol's)")
    run.add_argument("--seeds", help="comma-separated seeds (overrides the protocol's)")
    run.add_argument("--num-seeds", type=int, metavar="N", help="N seeds: the protocol's, then the next integers "
                     "after its largest")
    run.add_argument("--sources", help="comma-separated source datasets (overrides the protocol's)")
    run.add_argument("--backbones", help="comma-separated backbones NAME:WEIGHTS, each a job of its own (the "
                     "pretraining axis; overrides the protocol's; e.g. mobilenet_v2:imagenet,timm:convnext_atto:none)")
    run.add_argument("--sweep", action="append", metavar="KEY=V1,V2,...",
                     help="sweep a hyperparameter over these values, e.g. hparams.cafe.sep_weight=0.5,1.5,5 "
                     "(repeatable: the grid of all combinations)")
    run.add_argument("--set", action="append", metavar="KEY=VALUE",
                     help="override a protocol field, e.g. recipe.epochs=2 or backbone.path=FILE (repeatable)")
    run.add_argument("--data-root", help="folder holding one sub-folder per dataset (default $FER_DATA_ROOT)")
    run.add_argument("--dataset-path", action="append", metavar="NAME=DIR", help="one dataset's folder (repeatable)")
    run.add_argument("--tracking-uri", help="result store: an MLflow tracking URI or jsonl:FOLDER (default "
                     "$MLFLOW_TRACKING_URI or sqlite:///results/mlflow.db)")
    run.add_argument("--executor", choices=["local", "pool", "ray", "slurm"], default="local",
                     help="local: one job at a time in this process (default); pool: worker processes on this "
                     "machine, one GPU each when there are several; ray: Ray tasks; slurm: a Slurm job array "
                     "(submitit)")
    run.add_argument("--slurm", action="append", metavar="KEY=VALUE",
                     help="slurm: partition, time_min, mem_gb, cpus_per_task, gpus_per_task, account, qos, "
                     "array_parallelism, folder, timeout_requeues, or any sbatch option (repeatable; over --slurm-config)")
    run.add_argument("--slurm-config", metavar="FILE", help="slurm: a TOML file whose [slurm] table holds those keys")
    run.add_argument("--workers", type=int, help="pool: worker processes (default --jobs-per-gpu x GPUs, at least 1)")
    run.add_argument("--ray-address", help="join a running Ray cluster (default: start a local one)")
    run.add_argument("--jobs-per-gpu", type=int, default=1, help="jobs sharing one GPU: N worker processes per GPU (local or pool), "
                     "1/N of a GPU per task with Ray (default 1)")
    run.add_argument("--fuse", type=int, default=1, metavar="K",
                     help="train up to K jobs of one method (same hyperparameters and recipe but the seed; "
                     "sources may differ) as one fused model in one process, each still its own run; "
                     "recorded as execution.fused. Helps on a GPU; on a 2-core CPU it is slower (default 1: off)")
    run.add_argument("--threads", type=int, help="torch threads per job, the same in every executor (default: this "
                     "machine's cores / --jobs-per-gpu); recorded as env.threads: numbers depend on it")
    run.add_argument("--system-metrics-every", type=float, metavar="SECONDS",
                     help="sample CPU, memory, disk, network and GPU use into each job's run (MLflow system/ "
                     "metrics) every SECONDS; 0: off (default 10)")
    run.add_argument("--device", help="torch device for local jobs (default cuda when present, else cpu)")
    run.add_argument("--resume-dir", metavar="DIR",
                     help="folder for the jobs' epoch checkpoints, readable by every worker (default: resume/ beside a "
                     "local store, else results/resume; Slurm: its shared folder)")
    run.add_argument("--resume-every", type=float, metavar="SECONDS",
                     help="write a job's epoch checkpoint only when SECONDS have passed since its last one (default "
                     "60: epochs of seconds are not worth writing; 0: after every epoch)")
    run.add_argument("--resume-mid-epoch", type=float, metavar="SECONDS",
                     help="for long epochs: also write it between two batches once SECONDS have passed since the "
                     "last write (e.g. 900: every 15 minutes); a later try goes on from the next batch (default: off)")
    run.add_argument("--no-resume", action="store_true",
                     help="save no epoch checkpoints: a stopped job trains again from its first epoch")
    run.add_argument("--dry-run", action="store_true", help="list the jobs and whether each is FINISHED; run nothing")
    run.set_defaults(func=_cmd_run)
