"""GradCAM maps of trained runs side by side on the same target images (the paper's Fig. 4:
FERPlus test images, EAC and CAFE trained on RAF-DB).

The runs are found in the store (FINISHED job runs of each method for one source and seed) and
rebuilt from their checkpoints, so nothing is retrained. The images are a fixed, seeded draw
from the target's split, the same for every method. The CAM code is the `grad-cam` package's
(pytorch-grad-cam); what a method contributes is `gradcam_layer()`, the layer whose activations
and gradients are weighed (for every method trained on a backbone: the backbone's last block),
and its test-time logits. Which logit is explained is a choice: the image's labelled class
(default, so that every method explains the same class) or each model's predicted class.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..training.augment import normalize
from ..core.errors import BenchmarkError
from ..core.labels import CLASSES
from ..store import schema
from ..store.base import ResultStore, RunRecord

EXPLAINED = ("label", "predicted")


@dataclass
class Panel:
    """One method's row of the figure."""

    method: str
    run_id: str
    maps: np.ndarray  # (N, H, W) in [0, 1]
    predicted: np.ndarray  # (N,) class indices
    data: Any  # the target split, decoded at the run's input size


def find_run(store: ResultStore, experiment: str, method: str, source: str, seed: int) -> RunRecord:
    """The most recent FINISHED job run of `method` trained on `source` with `seed`."""
    experiment_id = store.experiment(experiment, create=False)
    runs = [] if experiment_id is None else [
        r for r in store.runs(experiment_id, jobs_only=True)
        if r.status == "FINISHED" and r.tags.get(schema.METHOD) == method and r.tags.get(schema.SOURCE) == source
        and r.tags.get(schema.SEED) == str(seed)]
    if not runs:
        raise BenchmarkError(f"no FINISHED run of {method} trained on {source} (seed {seed}) in experiment "
                             f"{experiment!r} of {store.uri}; train it first: benchmark run --protocol {experiment} "
                             f"--methods {method} --sources {source} --seeds {seed}")
    return max(runs, key=lambda r: r.start_time)


def pick_images(n_total: int, n: int, seed: int) -> np.ndarray:
    """`n` distinct row indices of a split of `n_total` images, sorted; the same for a given seed."""
    if n < 1:
        raise BenchmarkError(f"--images {n}: must be 1 or more")
    return np.sort(np.random.default_rng(seed).choice(n_total, size=min(n, n_total), replace=False))


class _TestLogits(nn.Module):
    """The method's test-time logits of rows `rows` of `data`, as a module GradCAM can call."""

    def __init__(self, method, data, rows: np.ndarray):
        super().__init__()
        self.trained = method.model  # a submodule, so GradCAM finds the parameters (and their device)
        self.method, self.data, self.rows = method, data, torch.from_numpy(rows)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.method.logits(x, self.rows, self.data).float()


def gradcam_maps(method, data, rows: np.ndarray, explain: str) -> tuple[np.ndarray, np.ndarray]:
    """((N, H, W) GradCAM maps, (N,) predicted classes) of rows `rows` of `data`."""
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    layer_of = getattr(method, "gradcam_layer", None)
    if layer_of is None:
        raise BenchmarkError(f"method {method.name}: no trained backbone to explain (GradCAM needs one)")
    method.model.eval()
    x = normalize(torch.from_numpy(data.read(rows)).to(method.device))
    model = _TestLogits(method, data, rows)
    with torch.no_grad():
        predicted = model(x).argmax(1).cpu().numpy()
    classes = data.labels[rows] if explain == "label" else predicted
    with GradCAM(model=model, target_layers=[layer_of()]) as cam:
        maps = cam(input_tensor=x, targets=[ClassifierOutputTarget(int(c)) for c in classes])
    return maps, predicted


def explain_runs(store: ResultStore, experiment: str, methods: list[str], source: str, seed: int, samples,
                 n_images: int, image_seed: int, explain: str, device: torch.device,
                 skip_bad: bool = False) -> tuple[list[Panel], np.ndarray]:
    """(one Panel per method, the rows of the images explained). Each run's images are decoded at
    the size it was trained at; the rows are drawn once, so every method sees the same images."""
    from ..training import checkpoint
    from ..data import decode_split

    if explain not in EXPLAINED:
        raise BenchmarkError(f"--explain {explain!r}: expected one of {', '.join(EXPLAINED)}")
    runs = [find_run(store, experiment, name, source, seed) for name in methods]  # all found before any work
    panels, rows = [], None
    for name, run in zip(methods, runs):
        with tempfile.TemporaryDirectory() as tmp:
            method, spec = checkpoint.load(store.checkpoint(run.run_id, Path(tmp)), device)
        data = decode_split(samples, spec["input_size"], skip_bad=skip_bad)
        rows = pick_images(len(data), n_images, image_seed) if rows is None else rows
        maps, predicted = gradcam_maps(method, data, rows, explain)
        panels.append(Panel(name, run.run_id, maps, predicted, data))
    return panels, rows


def gradcam_figure(panels: list[Panel], rows: np.ndarray, title: str):
    """Row 0: the images with their labels; one row per method: its map over the image, with
    its prediction (green when right, red when wrong)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from pytorch_grad_cam.utils.image import show_cam_on_image

    labels = panels[0].data.labels[rows]
    n = len(rows)
    fig, axes = plt.subplots(len(panels) + 1, n, figsize=(1.6 * n + 0.8, 1.75 * (len(panels) + 1) + 0.6),
                             squeeze=False)
    for j in range(n):
        axes[0, j].imshow(panels[0].data.read(rows[j:j + 1])[0])
        axes[0, j].set_title(f"label: {CLASSES[labels[j]]}", fontsize=7)
        for i, panel in enumerate(panels, start=1):
            image = panel.data.read(rows[j:j + 1])[0].astype(np.float32) / 255.0
            axes[i, j].imshow(show_cam_on_image(image, panel.maps[j], use_rgb=True))
            right = panel.predicted[j] == labels[j]
            axes[i, j].set_title(f"pred: {CLASSES[panel.predicted[j]]}", fontsize=7,
                                 color="tab:green" if right else "tab:red")
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0, 0].set_ylabel("image", fontsize=8)
    for i, panel in enumerate(panels, start=1):
        axes[i, 0].set_ylabel(panel.method, fontsize=9)
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    return fig
