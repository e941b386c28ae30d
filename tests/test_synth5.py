"""synth5: deterministic, five distinct domains, registered like the real datasets."""

from __future__ import annotations

import numpy as np

from benchmark.data import DATASETS, decode_split
from benchmark.data.synth5 import DOMAINS, build_domain, generate_split


def test_same_seed_gives_identical_bytes_other_seed_differs():
    style = DOMAINS["wild"]
    a_images, a_labels = generate_split(style, "train", seed=3, count=12)
    b_images, b_labels = generate_split(style, "train", seed=3, count=12)
    assert a_images.tobytes() == b_images.tobytes() and a_labels.tobytes() == b_labels.tobytes()
    c_images, _ = generate_split(style, "train", seed=4, count=12)
    assert c_images.tobytes() != a_images.tobytes()


def test_cached_domain_file_is_reproducible(tmp_path):
    first = build_domain("lowres", seed=1, scale=0.02, root=tmp_path / "a")
    second = build_domain("lowres", seed=1, scale=0.02, root=tmp_path / "b")
    with np.load(first) as a, np.load(second) as b:
        assert sorted(a.files) == sorted(b.files)
        for key in a.files:
            assert a[key].tobytes() == b[key].tobytes()


def test_domains_look_different():
    """Native size, colour and brightness differ the way the real datasets do."""
    stats = {}
    for name, style in DOMAINS.items():
        images, _ = generate_split(style, "test", seed=0, count=20)
        stats[name] = (images.shape[1], images.ndim == 3, float(images.mean()))
    assert stats["studio"][:2] == (100, False) and stats["webcam"][:2] == (48, True)
    assert stats["lowres"][1] and not stats["wild"][1]
    assert stats["film"][2] < 0.6 * stats["studio"][2]  # dark film frames


def test_reader_serves_all_three_splits_and_class_priors():
    reader = DATASETS.get("synth5/studio")
    train = reader.load(None, "train", scale=0.1)
    assert len(train) == 120 and train.pixels.shape == (120, 100, 100, 3)
    assert train.ids[0] == "train#0" and train.variant == "generated:seed0:scale0.1"
    counts = np.bincount(train.labels, minlength=7)
    assert counts.argmax() == 3  # happy-heavy like RAF-DB
    assert len(reader.load(None, "val", scale=0.1)) == 20
    decoded = decode_split(reader.load(None, "test", scale=0.1), 32)
    assert decoded.images.shape == (50, 32, 32, 3)
