"""`benchmark methods`, `benchmark recipes`, `benchmark protocols`, `benchmark datasets list|check`:
what exists, and what a dataset on disk holds."""

from __future__ import annotations

import argparse
from pathlib import Path


def _cmd_methods(args: argparse.Namespace) -> int:
    from tabulate import tabulate

    from ..training.plugins import method_index

    print(tabulate(method_index(), headers=["method", "fuses", "needs", "what it is"]))
    return 0


def _cmd_recipes(args: argparse.Namespace) -> int:
    from tabulate import tabulate

    from ..training.extensions import option_index

    rows = [(e.name, "\n".join(f"{name} = {default!r}" for name, _, default in e.fields) or "(always on)",
             e.description) for e in option_index()]
    print(tabulate(rows, headers=["training extension", "recipe options (defaults)", "what it is"], tablefmt="grid",
                   maxcolwidths=[None, None, 70]))
    return 0


def _cmd_protocols(args: argparse.Namespace) -> int:
    from tabulate import tabulate

    from ..jobs.protocol_files import protocol_rows

    rows = protocol_rows()
    print(tabulate(rows, headers=["protocol", "methods", "sources", "targets", "seeds", "epochs", "description"]))
    return 0


def _cmd_datasets_list(args: argparse.Namespace) -> int:
    from tabulate import tabulate

    from ..data import DATASETS

    rows = []
    for name in DATASETS.names():
        reader = DATASETS.get(name)
        folder = reader.default_folder + "/" if reader.default_folder else (
            "(generated)" if name.startswith("synth5/") else "(--root)")
        rows.append([name, folder, ",".join(reader.splits), reader.description])
    print(tabulate(rows, headers=["name", "folder under --data-root", "splits", "layout"]))
    return 0


def _cmd_datasets_check(args: argparse.Namespace) -> int:
    from ..data.check import check_dataset, format_report, slice_report, write_manifest
    from ..data.roots import dataset_root, parse_assignments

    root = dataset_root(args.name, root=args.root, data_root=args.data_root)
    options = parse_assignments(args.option, "--option")
    reports = check_dataset(args.name, root, args.split, skip_bad=args.skip_bad,
                            verify=not args.no_verify, options=options)
    print(format_report(args.name, reports))
    test = next((r.samples for r in reports if r.samples.split == "test"), None)
    if test is not None and (lines := slice_report(args.name, root, test)):
        print("\nslices of the test split (benchmark evaluate --slices):")
        print("\n".join(lines))
    if args.manifest:
        n = write_manifest(Path(args.manifest), reports)
        print(f"manifest: {args.manifest} ({n} rows)")
    return 0


def _cmd_datasets_slices(args: argparse.Namespace) -> int:
    from ..data import DATASETS
    from ..data.slices import SLICE_FAMILIES
    from ..data.slices.corruptions import CORRUPTIONS

    names = [args.name] if args.name else DATASETS.names()
    for name in names:
        DATASETS.get(name)
        for family_name in SLICE_FAMILIES.names():
            family = SLICE_FAMILIES.get(family_name)
            offered = family.names(name)
            plain = [s for s in offered if "@" not in s]
            if plain:
                print(f"{name}  {family.description}: " + ", ".join(f"{name}:{s}" for s in plain))
    print("any dataset  <dataset>:<corruption>@<1-5>, corruption one of: " + ", ".join(CORRUPTIONS))
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    methods = sub.add_parser("methods", help="list the registered methods")
    methods.set_defaults(func=_cmd_methods)
    recipes = sub.add_parser("recipes", help="list the training extensions (DG recipes and the loop's own) and "
                             "their recipe options, for --set recipe.NAME=VALUE")
    recipes.set_defaults(func=_cmd_recipes)
    protocols = sub.add_parser("protocols", help="list the protocol files")
    protocols.set_defaults(func=_cmd_protocols)
    datasets = sub.add_parser("datasets", help="list dataset readers, or check a dataset on disk")
    dsub = datasets.add_subparsers(dest="datasets_command", required=True, metavar="ACTION")
    dlist = dsub.add_parser("list", help="the readers and the folder each expects under --data-root")
    dlist.set_defaults(func=_cmd_datasets_list)
    check = dsub.add_parser("check", help="read every split, count each class, report what was dropped and why")
    check.add_argument("name", help="reader name, e.g. rafdb or synth5/studio (see `datasets list`)")
    check.add_argument("--root", help="the dataset's own folder")
    check.add_argument("--data-root", help="folder holding one sub-folder per dataset (default $FER_DATA_ROOT)")
    check.add_argument("--split", action="append", choices=["train", "val", "test"],
                       help="check only this split (repeatable; default all the reader has)")
    check.add_argument("--option", action="append", metavar="KEY=VALUE",
                       help="reader option, e.g. variant=original for rafdb (repeatable)")
    check.add_argument("--skip-bad", action="store_true",
                       help="drop rows whose image is missing or unreadable and count them, instead of failing")
    check.add_argument("--no-verify", action="store_true", help="do not decode every image (faster)")
    check.add_argument("--manifest", metavar="FILE", help="write a CSV split,path,label of every kept sample")
    check.set_defaults(func=_cmd_datasets_check)
    slices = dsub.add_parser("slices", help="list the slices each dataset offers (benchmark evaluate --slices)")
    slices.add_argument("name", nargs="?", help="one dataset (default: every reader)")
    slices.set_defaults(func=_cmd_datasets_slices)
