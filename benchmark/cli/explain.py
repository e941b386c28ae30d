"""`benchmark explain`: GradCAM maps of trained runs on the same target images (the paper's Fig.
4)."""

from __future__ import annotations

import argparse
from pathlib import Path


def _cmd_explain(args: argparse.Namespace) -> int:
    from ..data.roots import parse_assignments
    from ..report.explain import explain_runs, gradcam_figure
    from ..report.figures import save_figure
    from ..jobs.plan import plan_from
    from ..jobs.protocol import load_protocol
    from ..store import open_store
    from ..training.trainer import pick_device

    protocol = load_protocol(args.protocol)
    plan = plan_from(protocol, args.data_root, parse_assignments(args.dataset_path, "--dataset-path"))
    methods = [m.strip() for m in args.methods.split(",")]
    panels, rows = explain_runs(open_store(args.tracking_uri), protocol.name, methods, args.source, args.seed,
                                plan.samples(args.target, args.split), args.images, args.image_seed, args.explain,
                                pick_device(args.device), skip_bad=plan.skip_bad)
    which = "labelled" if args.explain == "label" else "predicted"
    fig = gradcam_figure(panels, rows,
                         f"GradCAM (logit of the {which} class, backbone's last block) of {len(rows)} {args.target} "
                         f"{args.split} images (image seed {args.image_seed}); models trained on {args.source}, "
                         f"seed {args.seed}, last epoch")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    paths = save_figure(fig, out.parent / out.name.removesuffix(".png").removesuffix(".pdf"))
    for panel in panels:
        print(f"{panel.method}: run {panel.run_id}, {int((panel.predicted == panel.data.labels[rows]).sum())}/{len(rows)} "
              "of these images right")
    print("wrote " + ", ".join(str(p) for p in paths))
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    ex = sub.add_parser("explain", help="GradCAM maps of trained runs on the same target images, side by side "
                        "(the paper's Fig. 4)")
    ex.add_argument("--methods", required=True, help="comma-separated methods, one row each (e.g. eac,cafe)")
    ex.add_argument("--source", required=True, help="the dataset the runs were trained on (e.g. rafdb)")
    ex.add_argument("--target", required=True, help="the dataset whose images are explained (e.g. ferplus)")
    ex.add_argument("--protocol", default="synth5", help="the protocol (experiment) the runs belong to (default synth5)")
    ex.add_argument("--seed", type=int, default=0, help="the runs' training seed (default 0)")
    ex.add_argument("--split", default="test", help="the target's split (default test)")
    ex.add_argument("--images", type=int, default=8, help="how many images (default 8)")
    ex.add_argument("--image-seed", type=int, default=0, help="seed of the draw of images (default 0)")
    ex.add_argument("--explain", choices=["label", "predicted"], default="label",
                    help="the logit explained: the image's labelled class (default) or each model's prediction")
    ex.add_argument("--out", default="results/gradcam.png", help="figure path; a .pdf is written beside the .png "
                    "(default results/gradcam.png)")
    ex.add_argument("--data-root", help="folder holding one sub-folder per dataset (default $FER_DATA_ROOT)")
    ex.add_argument("--dataset-path", action="append", metavar="NAME=DIR", help="one dataset's folder (repeatable)")
    ex.add_argument("--device", help="torch device (default cuda when present, else cpu)")
    ex.add_argument("--tracking-uri", help="result store (default as `run`)")
    ex.set_defaults(func=_cmd_explain)
