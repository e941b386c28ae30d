"""`benchmark register`: per (method, source), the model a selection rule picks registered in
MLflow's model registry under an alias; `--backfill` gives older stores' job runs their models."""

from __future__ import annotations

import argparse
import time


def _cmd_register(args: argparse.Namespace) -> int:
    from ..core.errors import BenchmarkError
    from ..deploy import register
    from ..store import open_store

    store = open_store(args.tracking_uri)
    protocol = args.protocol or store.latest_protocol()
    start = time.perf_counter()
    if args.backfill:
        made, had = register.backfill(store, protocol)
        print(f"{made} models logged for FINISHED job runs of {protocol} that had none; {had} had one already "
              f"({time.perf_counter() - start:.1f} s)")
        if not args.method:
            return 0
    if not args.method:
        raise BenchmarkError("register needs --method (or --backfill alone)")
    for choice, name, version, made in register.register(store, protocol, args.method, args.source, args.rule,
                                                         args.alias):
        score, best = choice.ranked[0]
        print(f"{name}: version {version} ({'registered now' if made else 'already registered'}), alias "
              f"@{args.alias} -> {best.name}, {args.rule} {100 * score:.2f}% (best of {len(choice.ranked)})")
        print(f"  use: models:/{name}@{args.alias}")
    print(f"({time.perf_counter() - start:.1f} s)")
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    from ..deploy.register import DEFAULT_ALIAS, RULES

    p = sub.add_parser("register", help="register the model a selection rule picks per (method, source)",
                       description="Per (method, source) of a protocol, register the model the rule picks "
                                   "(reading the source's data only) under an alias; running it again makes no "
                                   "new version. --backfill first gives job runs of older stores their models.")
    p.add_argument("--protocol", help="protocol (experiment) name (default: the latest run)")
    p.add_argument("--method", help="method as tables name it, e.g. cafe or erm+swad")
    p.add_argument("--source", help="one source only (default: every source of the method)")
    p.add_argument("--rule", default="source_val", choices=sorted(RULES),
                   help="what picks the model: " + "; ".join(f"{k}: {v}" for k, v in RULES.items()))
    p.add_argument("--alias", default=DEFAULT_ALIAS, help=f"alias set on the picked version (default {DEFAULT_ALIAS})")
    p.add_argument("--backfill", action="store_true",
                   help="log a model for every FINISHED job run that has none (stores written before models were)")
    p.add_argument("--tracking-uri", help="result store (default as `run`)")
    p.set_defaults(func=_cmd_register)
