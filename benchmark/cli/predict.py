"""`benchmark predict`: a trained model's class and probabilities for image files, outside the
grid; `benchmark export`: a model as a self-contained MLflow model folder."""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path


def _cmd_predict(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from ..deploy.classifier import ImageClassifier
    from ..deploy.predict import checkpoint_folder, image_files, predict_files
    from ..store import open_store

    store = open_store(args.tracking_uri)
    files = image_files([Path(p) for p in args.images])
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        folder, what = checkpoint_folder(store, args.model, Path(tmp))
        classifier = ImageClassifier.load(folder, args.device)
        show = args.progress == "on" or (args.progress == "auto" and len(files) > 1 and sys.stderr.isatty())
        with tqdm(total=len(files), unit="image", disable=not show) as bar:
            frame, skipped = predict_files(classifier, files, bar.update)
    for path, why in skipped:
        print(f"skipped {path}: {why}", file=sys.stderr)
    print(f"{what}: {len(frame)} images predicted, {len(skipped)} skipped (not images), "
          f"in {time.perf_counter() - start:.1f} s", file=sys.stderr)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        frame.to_csv(args.out, index=False)
        print(f"wrote {args.out}", file=sys.stderr)
    else:
        frame.round(6).to_csv(sys.stdout, index=False)
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from ..core.errors import BenchmarkError
    from ..deploy.logged_model import save
    from ..deploy.predict import checkpoint_folder
    from ..store import open_store

    out = Path(args.out)
    if out.exists():
        raise BenchmarkError(f"{out}: exists; export writes a new folder")
    store = open_store(args.tracking_uri)
    with tempfile.TemporaryDirectory() as tmp:
        folder, what = checkpoint_folder(store, args.model, Path(tmp) / "download")
        save(out, folder, bundle_encoder=args.bundle_encoder)
    print(f"{what} exported to {out}{' with its encoder' if args.bundle_encoder else ''}; serve it with "
          f"`mlflow models serve -m {out} --env-manager local -h 127.0.0.1`")
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    model_help = ("models:/<name>@<alias>, models:/<name>/<version>, models:/<model id>, a model id (m-...) "
                  "or a job's run id")
    p = sub.add_parser("predict", help="a trained model's class and probabilities for image files or folders")
    p.add_argument("--model", required=True, help=model_help)
    p.add_argument("images", nargs="+", help="image files and folders (every file below a folder)")
    p.add_argument("--out", help="CSV to write (default: printed)")
    p.add_argument("--device", help="torch device (default cuda when present, else cpu)")
    p.add_argument("--progress", choices=["auto", "on", "off"], default="auto",
                   help="progress bar (auto: for several images on a terminal)")
    p.add_argument("--tracking-uri", help="result store (default as `run`)")
    p.set_defaults(func=_cmd_predict)

    e = sub.add_parser("export", help="a trained model as a self-contained MLflow model folder")
    e.add_argument("--model", required=True, help=model_help)
    e.add_argument("--out", required=True, help="the folder to write (must not exist)")
    e.add_argument("--bundle-encoder", action="store_true",
                   help="copy the frozen encoder's weights in (else they are found in the local caches at load time)")
    e.add_argument("--tracking-uri", help="result store (default as `run`)")
    e.set_defaults(func=_cmd_export)
