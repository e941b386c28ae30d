"""`benchmark ui` in a real browser: headless Chromium loads the URL it prints and the page shows
every job run of a small grid as its own row, with its method, source and accuracies; then
`kill <pid>` of `benchmark ui` stops the MLflow server under it (nothing left holding the port).

Skipped when Chromium is missing, except in CI (`BENCHMARK_CI=1`, set by .ci/run, which installs
Debian's `chromium`): there a missing browser fails the test."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request

import pytest

from benchmark.cli import main

from .test_runner import finished_runs, free_port, wait_until_healthy, write_protocol


def chromium() -> str:
    found = next((shutil.which(name) for name in ("chromium", "chromium-browser", "google-chrome")
                  if shutil.which(name)), None)
    if found is None:
        if os.environ.get("BENCHMARK_CI"):
            pytest.fail("Chromium is missing in CI (.ci/run installs Debian's chromium)")
        pytest.skip("no Chromium on this machine (apt install chromium)")
    return found


def start_ui(uri: str, port: int) -> subprocess.Popen:
    """`benchmark ui` on `uri` at `port`, in a process group of its own, its stdout readable."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    return subprocess.Popen([sys.executable, "-m", "benchmark", "ui", "--tracking-uri", uri, "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env,
                            start_new_session=True)


def rendered_page(browser: str, url: str, wait_ms: int = 15000, width: int = 1600) -> str:
    """The DOM of `url` after its scripts ran for `wait_ms` of virtual time."""
    proc = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                           f"--virtual-time-budget={wait_ms}", f"--window-size={width},1000", "--dump-dom", url],
                          capture_output=True, text=True, timeout=120)
    return proc.stdout


@pytest.mark.slow
def test_the_ui_opens_on_the_job_runs_and_a_models_page_lists_its_adapted_and_slice_results(tmp_path):
    """The jobs view, the Models view, and (after `benchmark adapt` and `benchmark evaluate` on a
    slice) a trained model's page listing those evaluations' metrics beside its own."""
    from benchmark.store import open_store, schema

    browser = chromium()
    protocol = write_protocol(tmp_path)
    uri = f"sqlite:///{tmp_path / 'store.db'}"
    assert main(["run", "--protocol", str(protocol), "--tracking-uri", uri, "--methods", "erm"]) == 0
    runs = finished_runs(uri)
    assert len(runs) == 2

    port = free_port()
    ui = start_ui(uri, port)
    try:
        first = ui.stdout.readline()
        url = re.search(r"http://\S+", first).group(0)
        assert url.startswith(f"http://127.0.0.1:{port}/#/experiments/")
        wait_until_healthy(f"http://127.0.0.1:{port}", ui, "the UI")
        names = [r.tags["mlflow.runName"] for r in runs]
        for budget in (15000, 45000):  # a slow machine gets longer to fetch and render the runs
            page = rendered_page(browser, url, budget)
            if all(f">{name}<" in page for name in names):
                break
        text = re.sub(r"<[^>]+>", " ", page)
        body = page[page.find("<body"):]
        text = re.sub(r"<[^>]+>", " ", re.sub(r"<style.*?</style>", " ", body, flags=re.S))
        assert "Sort: test/mean_unseen_acc" in text  # the jobs view, not the default one
        # Each job run is a row of its own (not folded under its grid run), sorted by mean unseen
        # accuracy, best first; the grid run, which has none, comes after them.
        jobs = sorted(runs, key=lambda r: -r.metrics["test/mean_unseen_acc"])
        places = [body.find(f">{r.tags['mlflow.runName']}<") for r in jobs]
        grid = re.search(r">(grid-\d{8}-\d{6})<", body)
        assert all(p >= 0 for p in places) and grid is not None, places
        assert max(places) < grid.start()
        for (a, pa), (b, pb) in zip(zip(jobs, places), list(zip(jobs, places))[1:]):
            if a.metrics["test/mean_unseen_acc"] > b.metrics["test/mean_unseen_acc"]:
                assert pa < pb
        for run in runs:  # method, source, seed and the accuracies, visible without a click
            for value in (run.tags["source"], str(run.metrics["test/mean_unseen_acc"]),
                          str(run.metrics["test/mean_acc"])):
                assert value in text, value
        assert "erm" in text and "collapsed" in text  # the collapse tag's column

        # The Models view: each job's model by name, with its accuracies under each test dataset.
        models_url = re.search(r"http://\S+", ui.stdout.readline()).group(0)
        assert models_url.endswith("/models?workflowType=machine_learning")
        model_names = [f"erm-{r.tags['source'].replace('/', '-')}-seed0" for r in runs]
        for budget in (15000, 45000):
            page = rendered_page(browser, models_url, budget, width=2400)  # room for the metric columns
            if all(f">{name}<" in page for name in model_names) and "test/synth5.film/acc" in page:
                break
        body = page[page.find("<body"):]
        text = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", re.sub(r"<style.*?</style>", " ", body, flags=re.S)))
        assert all(name in text for name in model_names), text[:2000]
        assert "Dataset: synth5/" in text and "test/synth5.film/acc" in text
        for run in runs:
            assert str(run.metrics["test/synth5.film/acc"]) in text

        # A trained model's page lists its adapted and slice evaluations (run while the UI is up: it
        # reads the store live): each run by name, its value.
        studio = ["--protocol", str(protocol), "--tracking-uri", uri, "--methods", "erm", "--sources", "synth5/studio"]
        assert main(["adapt", *studio, "--tta", "norm"]) == 0
        assert main(["evaluate", *studio, "--slices", "synth5/film:contrast@1"]) == 0
        store = open_store(uri)
        experiment = store.experiment("tiny")
        evaluations = store.runs(experiment, kind=schema.TTA_KIND)
        adapted = next(r for r in evaluations if r.tags[schema.TTA] == "norm" and r.tags[schema.TTA_TARGET] == "synth5/film")
        sliced = next(r for r in evaluations if r.tags[schema.TTA_TARGET] == "synth5/film:contrast@1")
        assert adapted.tags[schema.SOURCE_MODEL] == sliced.tags[schema.SOURCE_MODEL]
        url = f"http://127.0.0.1:{port}/#/experiments/{experiment}/models/{adapted.tags[schema.SOURCE_MODEL]}"
        shown = {adapted.tags["mlflow.runName"]: ("test/synth5.film/acc", adapted.metrics["test/synth5.film/acc"]),
                 sliced.tags["mlflow.runName"]: ("test/synth5.film:contrast_at_1/acc",
                                                 sliced.metrics["test/synth5.film:contrast_at_1/acc"])}
        for budget in (15000, 45000):
            page = rendered_page(browser, url, budget, width=2400)
            if all(name in page for name in shown):
                break
        body = page[page.find("<body"):]
        text = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", re.sub(r"<style.*?</style>", " ", body, flags=re.S)))
        for name, (key, value) in shown.items():
            assert name in text and key in text and str(value) in text, (name, key, text[:3000])
        stop_and_check_nothing_is_left(ui, port)
    finally:
        if ui.poll() is None:
            os.killpg(ui.pid, signal.SIGKILL)


def stop_and_check_nothing_is_left(ui: subprocess.Popen, port: int, group: bool = False, path: str = "/health") -> None:
    """SIGTERM (what `kill <pid>` sends) to `benchmark ui` (or, `group`, `kill -- -<pid>` to the
    process group a server leads): it and its server processes end and the port stops answering."""
    import psutil

    family = [ui.pid] + [c.pid for c in psutil.Process(ui.pid).children(recursive=True)]
    assert len(family) > 1  # mlflow's own server processes
    if group:
        os.killpg(ui.pid, signal.SIGTERM)
    else:
        os.kill(ui.pid, signal.SIGTERM)
    ui.wait(timeout=30)

    def alive(pid: int) -> bool:
        try:
            return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False

    deadline = time.time() + 30
    while any(alive(p) for p in family):
        assert time.time() < deadline, "processes of the UI outlived it"
        time.sleep(0.2)
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2)
