"""The decoded-image cache: decode once, reuse, rebuild when stale or truncated, RGB always."""

from __future__ import annotations

import numpy as np
import pytest

from benchmark.data import DATASETS, cache, decode_split
from benchmark.core.errors import DatasetError
from benchmark.core.labels import CLASSES
from PIL import Image

from .fsdata import write_image, write_text


def make_folder_dataset(root, n_per_class=2):
    for cls in ("angry", "happy", "neutral"):
        for i in range(n_per_class):
            write_image(root / f"train/{cls}/{i}.png", value=40 * i + 10)
    return root


def test_decode_resizes_to_rgb_and_second_load_reads_the_cache(tmp_path, monkeypatch):
    root = make_folder_dataset(tmp_path / "d")
    samples = DATASETS.get("imagefolder").load(root, "train")
    first = decode_split(samples, 16)
    assert first.images.shape == (6, 16, 16, 3) and first.images.dtype == np.uint8
    # RGB order kept: write_image puts 255-value in red and value in blue.
    assert int(first.images[0, 0, 0, 0]) == 255 - 10 and int(first.images[0, 0, 0, 2]) == 10
    assert isinstance(first.images, np.memmap)

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded again although the cache holds this split")

    monkeypatch.setattr(cache, "native_image", no_decoding)
    second = decode_split(samples, 16)
    assert second.path == first.path
    np.testing.assert_array_equal(second.images, first.images)
    np.testing.assert_array_equal(second.labels, samples.labels)


def test_grey_images_become_three_equal_channels(tmp_path):
    root = tmp_path / "g"
    write_image(root / "train/sad/a.png", value=77, grey=True)
    decoded = decode_split(DATASETS.get("imagefolder").load(root, "train"), 8)
    assert decoded.images.shape == (1, 8, 8, 3) and set(np.unique(decoded.images)) == {77}


def test_changed_labels_use_a_new_entry(tmp_path):
    root = tmp_path / "lst"
    write_image(root / "a.png")
    write_image(root / "b.png")
    write_text(root / "train.txt", "a.png 0\nb.png 1\n")
    first = decode_split(DATASETS.get("list").load(root, "train"), 8)
    write_text(root / "train.txt", "a.png 0\nb.png 2\n")
    second = decode_split(DATASETS.get("list").load(root, "train"), 8)
    assert second.path != first.path and second.labels.tolist() == [0, 2]


def test_truncated_cache_file_is_rebuilt(tmp_path):
    root = make_folder_dataset(tmp_path / "d")
    samples = DATASETS.get("imagefolder").load(root, "train")
    first = decode_split(samples, 16)
    expected = np.array(first.images)
    images_file = first.path / "images.npy"
    del first
    with open(images_file, "r+b") as fh:
        fh.truncate(images_file.stat().st_size - 100)
    rebuilt = decode_split(samples, 16)
    np.testing.assert_array_equal(rebuilt.images, expected)
    assert images_file.stat().st_size > 16 * 16 * 3 * 6


def test_half_written_entry_is_never_used(tmp_path):
    root = make_folder_dataset(tmp_path / "d")
    samples = DATASETS.get("imagefolder").load(root, "train")
    final = cache.entry_dir(samples, 16, tmp_path / "c")
    final.mkdir(parents=True)
    (final / "images.npy").write_bytes(b"partial")  # e.g. a copy interrupted half-way, no meta.json
    decoded = decode_split(samples, 16, cache_dir=tmp_path / "c")
    assert decoded.images.shape == (6, 16, 16, 3)


def test_corrupt_image_names_file_or_is_skipped_and_counted(tmp_path):
    root = make_folder_dataset(tmp_path / "d")
    (root / "train/happy/1.png").write_bytes(b"not a png at all")
    samples = DATASETS.get("imagefolder").load(root, "train")
    with pytest.raises(DatasetError, match=r"train/happy/1.png: unreadable image"):
        decode_split(samples, 16)
    decoded = decode_split(samples, 16, skip_bad=True)
    assert len(decoded) == 5 and decoded.dropped["unreadable image"] == 1
    assert "train/happy/1.png" not in [samples.ids[k] for k in decoded.kept]
    # The entry written with --skip-bad still refuses a strict load, naming the file.
    with pytest.raises(DatasetError, match=r"train/happy/1.png: unreadable image"):
        decode_split(samples, 16)


def test_pixel_samples_decode_without_files(tmp_path):
    from .test_readers import make_fer2013_csv

    samples = DATASETS.get("ferplus").load(make_fer2013_csv(tmp_path / "F"), "train")
    decoded = decode_split(samples, 24)
    assert decoded.images.shape == (2, 24, 24, 3) and int(decoded.images[1, 5, 5, 1]) == 10


def test_read_matches_the_memory_map_without_mapping_pages(tmp_path):
    """DecodedSplit.read returns the same pixels as indexing the memmap, in the asked order."""
    root = tmp_path / "data"
    rng = np.random.default_rng(0)
    for k in range(12):
        folder = root / "train" / CLASSES[k % 7]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(folder / f"{k}.png")
    data = decode_split(DATASETS.get("imagefolder").load(root, "train"), 16, cache_dir=tmp_path / "cache")
    assert isinstance(data.images, np.memmap)
    index = np.array([5, 0, 11, 5, 3])
    np.testing.assert_array_equal(data.read(index), np.asarray(data.images)[index])
    np.testing.assert_array_equal(data.read(slice(2, 9)), np.asarray(data.images)[2:9])
    np.testing.assert_array_equal(data.read(slice(10, 40)), np.asarray(data.images)[10:])
    assert data.read(np.array([], dtype=np.int64)).shape == (0, 16, 16, 3)
    with pytest.raises(IndexError, match="rows outside"):
        data.read(np.array([12]))
