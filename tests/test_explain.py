"""`benchmark explain`: GradCAM maps of two trained runs on the same seeded target images."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from benchmark.cli import main
from benchmark.core.errors import BenchmarkError
from benchmark.report.explain import pick_images

from .test_runner import write_protocol


def test_the_image_draw_is_seeded_distinct_and_sorted():
    a, b = pick_images(100, 6, seed=3), pick_images(100, 6, seed=3)
    assert (a == b).all() and len(set(a)) == 6 and (np.diff(a) > 0).all()
    assert not (a == pick_images(100, 6, seed=4)).all()
    assert len(pick_images(4, 10, seed=0)) == 4  # a small split gives what it has
    with pytest.raises(BenchmarkError, match="--images 0"):
        pick_images(10, 0, seed=0)


@pytest.mark.slow
def test_explain_draws_gradcam_of_eac_and_cafe_runs_side_by_side(tmp_path, capsys):
    # The runner tests' tiny protocol, two of the methods the paper's figure compares, 64 px (a
    # 2x2 feature map: at 32 px MobileNet's is 1x1 and every map is flat).
    common = ["--protocol", str(write_protocol(tmp_path)), "--tracking-uri", f"jsonl:{tmp_path}/runs"]
    training = ["--methods", "eac,cafe", "--sources", "synth5/studio", "--set", "recipe.input_size=64"]
    explain = ["explain", *common, "--methods", "eac,cafe", "--source", "synth5/studio", "--target", "synth5/film",
               "--images", "4", "--out", str(tmp_path / "fig" / "gradcam.png")]
    assert main(explain) == 2
    assert "no FINISHED run of eac trained on synth5/studio (seed 0)" in capsys.readouterr().err
    assert main(["run", *common, *training]) == 0
    capsys.readouterr()
    assert main(explain) == 0
    out = capsys.readouterr().out
    assert "eac: run " in out and "cafe: run " in out and "/4 of these images right" in out
    png, pdf = tmp_path / "fig" / "gradcam.png", tmp_path / "fig" / "gradcam.pdf"
    assert pdf.read_bytes().startswith(b"%PDF")
    with Image.open(png) as image:  # an image row and one row per method, four images wide
        width, height = image.size
    assert width > height > 0 and image.info["dpi"][0] == pytest.approx(200, abs=1)


def test_gradcam_maps_are_normalised_and_follow_the_explained_class(tmp_path):
    """The maps are in [0, 1] and one per image; explaining another logit changes them."""
    import torch

    from benchmark.data import decode_split
    from benchmark.report.explain import gradcam_maps
    from benchmark.jobs.plan import DataPlan
    from benchmark.training.method import Components
    from benchmark.training.plugins import build_method
    from benchmark.models.backbones import BackboneSpec

    plan = DataPlan(None, {}, {"synth5/film": {"scale": 0.03}})
    data = decode_split(plan.samples("synth5/film", "test"), 64)
    torch.manual_seed(0)
    method = build_method("erm", {}, Components(BackboneSpec("mobilenet_v2", "none")))
    method.build(torch.device("cpu"), 64)
    rows = pick_images(len(data), 3, seed=0)
    maps, predicted = gradcam_maps(method, data, rows, "label")
    again, _ = gradcam_maps(method, data, rows, "label")
    other, _ = gradcam_maps(method, data, rows, "predicted")
    assert maps.shape == (3, 64, 64) and maps.min() >= 0 and maps.max() <= 1 and predicted.shape == (3,)
    # Each map is scaled to peak near 1 (a 2x2 feature map at 64 px), or is all zero where GradCAM's
    # ReLU found no positive evidence for the class (an untrained network can give that).
    peaks = maps.max(axis=(1, 2))
    assert all(p > 0.99 or p == 0 for p in peaks) and (peaks > 0.99).any()
    assert np.array_equal(maps, again)
    same = data.labels[rows] == predicted
    assert all(np.array_equal(maps[k], other[k]) == bool(same[k]) for k in range(3))
