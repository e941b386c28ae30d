"""`benchmark ui`: the MLflow UI on the result store, opened on the jobs."""

from __future__ import annotations

import argparse
import os
import sys

from ..core.errors import BenchmarkError


def _cmd_ui(args: argparse.Namespace) -> int:
    from ..store import default_uri

    uri = args.tracking_uri or default_uri()
    if uri.startswith("jsonl:"):
        raise BenchmarkError(f"--tracking-uri {uri}: the UI shows MLflow stores only (a JSON-lines store is a folder "
                             "of text files to read as they are)")
    command = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", args.host,
               "--port", str(args.port)]
    link = models = f"http://{args.host}:{args.port}"
    try:  # the runs of the protocol with the newest finished job, if any
        from ..store import open_store, schema

        store = open_store(uri)
        # (an experiment made by an older version gets its view tags here)
        experiment = store.experiment(store.latest_protocol())
        link += f"/#/experiments/{experiment}/runs?{schema.UI_RUNS_QUERY}"
        models += f"/#/experiments/{experiment}/models?{schema.UI_MODELS_QUERY}"
    except BenchmarkError:
        models = ""
    print(f"MLflow UI on {link} for {uri}", flush=True)
    if models:
        print(f"its trained models, with their metrics per dataset: {models}", flush=True)
    # Become the MLflow process (no child in between): `kill <pid>` and Ctrl-C reach it, and it
    # passes them on to its server, so nothing is left holding the port.
    os.execv(sys.executable, command)
    return 0  # not reached


def add_parser(sub: argparse._SubParsersAction) -> None:
    ui = sub.add_parser("ui", help="start the MLflow UI on the results store (127.0.0.1 by default)")
    ui.add_argument("--tracking-uri", help="store to show (default as `run`)")
    ui.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    ui.add_argument("--port", type=int, default=5000)
    ui.set_defaults(func=_cmd_ui)
