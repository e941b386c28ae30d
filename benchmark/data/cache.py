"""The decoded-image cache: a split's images decoded once, resized, stored as one uint8 array.

Layout of one entry (a folder, renamed into place only when complete, so a half-written entry
is never seen under its final name):

    <cache>/images/<dataset>/<split>-<size>px-<key>/
        images.npy   (N, size, size, 3) uint8, read memory-mapped
        labels.npy   (N,) int64 canonical labels
        kept.npy     (N,) indices into the Samples that were decoded (unreadable ones skipped)
        meta.json    fingerprint, size, counts, and the unreadable files

The key hashes the split's fingerprint, the size and the decoding recipe, so a changed label
file or image set gets a new entry. An entry whose files do not match its meta (a truncated
array, say) is deleted and rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ..core.errors import DatasetError
from ..core.paths import cache_dir as default_cache_dir
from .images import read_rgb, resize_square, to_pil_rgb
from .samples import UNREADABLE, Samples

log = logging.getLogger(__name__)

# Bump when decoding changes (colour handling, resize filter), so old entries are not reused.
DECODE_RECIPE = "pil-rgb-bilinear-v2"  # v2: entries also hold each image's native size
CHUNK = 256


@dataclass
class DecodedSplit:
    """Decoded images of one split, as the trainer and evaluator read them."""

    images: np.ndarray  # (N, S, S, 3) uint8, usually a read-only memmap
    labels: np.ndarray  # (N,) int64
    kept: np.ndarray  # (N,) indices into the source Samples
    dataset: str
    split: str
    fingerprint: str  # of the source Samples
    size: int
    dropped: Counter
    path: Path
    samples: Samples | None = None  # the parsed source, for the per-sample reference data path
    native_hw: np.ndarray | None = None  # (N, 2) int32 height, width before the resize (augment's noise)
    # A multi-source training split (benchmark.data.union): each sample's dataset, as an index
    # into `domain_names`; None for a split of one dataset.
    domains: np.ndarray | None = None
    domain_names: tuple[str, ...] = ()

    def __len__(self) -> int:
        return len(self.labels)

    def read(self, rows: np.ndarray | slice) -> np.ndarray:
        """Images `rows` (indices or a slice) as an in-memory array.

        A memory-mapped cache is read with positioned file reads, not through the map: pages
        touched through a map count in this process's resident memory until unmapped, so an epoch
        over a 100k-image split would make the process look (and be accounted) 4 GB large. With
        pread the OS page cache still keeps the file warm, outside the process.
        """
        images = self.images
        if not isinstance(images, np.memmap) or images.filename is None:
            return np.array(images[rows])
        rows = np.arange(len(self))[rows] if isinstance(rows, slice) else np.asarray(rows)
        out = np.empty((len(rows), *images.shape[1:]), dtype=images.dtype)
        if not len(rows):
            return out
        if rows.min() < 0 or rows.max() >= len(images):
            raise IndexError(f"{self.path}: rows outside 0..{len(images) - 1}")
        row_bytes = out[0].nbytes
        contiguous = bool(np.all(np.diff(rows) == 1))
        # One read for a run of consecutive rows (evaluation), one per row otherwise (training).
        reads = [(rows[0], out)] if contiguous else [(i, out[k]) for k, i in enumerate(rows)]
        fd = os.open(images.filename, os.O_RDONLY)
        try:
            for first, target in reads:
                if os.preadv(fd, [memoryview(target).cast("B")], images.offset + int(first) * row_bytes) != target.nbytes:
                    raise OSError(f"{images.filename}: short read at row {first} (truncated cache file?)")
        finally:
            os.close(fd)
        return out


def native_image(samples: Samples, index: int) -> Image.Image:
    """One image at its stored size, from its file or the in-memory pixels: RGB, or BGR where
    the split's `channel_order` asks for it (to reproduce the authors' evaluation notebooks)."""
    img = to_pil_rgb(samples.pixels[index]) if samples.pixels is not None else read_rgb(samples.path(index))
    if samples.boxes is not None:  # the face box, clipped to the image
        left, top, right, bottom = (int(v) for v in samples.boxes[index])
        box = (max(0, left), max(0, top), min(img.width, right), min(img.height, bottom))
        if box[2] <= box[0] or box[3] <= box[1]:
            raise DatasetError(f"{samples.path(index)}: face box {(left, top, right, bottom)} (left, top, right, "
                               f"bottom) lies outside the {img.width}x{img.height} image")
        img = img.crop(box)
    if samples.channel_order == "bgr":
        return Image.fromarray(np.asarray(img)[:, :, ::-1].copy())
    return img


def entry_dir(samples: Samples, size: int, cache_dir: Path) -> Path:
    key = hashlib.sha256(f"{samples.fingerprint}|{size}|{DECODE_RECIPE}".encode()).hexdigest()[:16]
    safe_name = samples.dataset.replace("/", "__")
    return cache_dir / "images" / safe_name / f"{samples.split}-{size}px-{key}"


def decode_split(
    samples: Samples,
    size: int,
    *,
    cache_dir: Path | None = None,
    skip_bad: bool = False,
    workers: int | None = None,
    progress: bool = False,
) -> DecodedSplit:
    """The decoded split from the cache, building the cache entry first if needed."""
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    final = entry_dir(samples, size, root)
    cached = _open_entry(final, samples, size, skip_bad)
    if cached is not None:
        return cached
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=final.name + ".tmp-", dir=final.parent))
    try:
        _build_entry(tmp, samples, size, skip_bad, workers, progress)
        try:
            os.rename(tmp, final)
        except OSError:
            # Another process finished the same entry first (rename onto a non-empty folder
            # fails); theirs is as good as ours.
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    opened = _open_entry(final, samples, size, skip_bad)
    if opened is None:
        raise DatasetError(f"{final}: cache entry could not be read back after writing it")
    return opened


def _build_entry(tmp: Path, samples: Samples, size: int, skip_bad: bool,
                 workers: int | None, progress: bool) -> None:
    n = len(samples)
    images = np.lib.format.open_memmap(tmp / "images.npy", mode="w+", dtype=np.uint8, shape=(n, size, size, 3))
    native = np.zeros((n, 2), dtype=np.int32)
    ok = np.ones(n, dtype=bool)
    unreadable: list[dict[str, str]] = []

    def decode_into(i: int) -> None:
        try:
            img = native_image(samples, i)
            native[i] = (img.height, img.width)
            images[i] = resize_square(img, size)
            if samples.transform is not None:
                images[i] = samples.transform(images[i], samples.ids[i])
        except DatasetError as exc:
            ok[i] = False
            unreadable.append({"id": samples.ids[i], "error": str(exc)})

    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=n, desc=f"decode {samples.dataset}/{samples.split}", unit="img", leave=False)
    # PIL releases the GIL while decoding and resizing, so threads use every core.
    with ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool:
        for start in range(0, n, CHUNK):
            list(pool.map(decode_into, range(start, min(n, start + CHUNK))))
            if bar is not None:
                bar.update(min(n, start + CHUNK) - start)
    if bar is not None:
        bar.close()
    if unreadable and not skip_bad:
        first = unreadable[0]["error"]
        raise DatasetError(f"{first} ({len(unreadable)} unreadable image(s) in {samples.dataset}/"
                           f"{samples.split}; use --skip-bad to drop them and count them)")
    kept = np.flatnonzero(ok)
    if len(kept) < n:  # compact: the array holds only the readable images
        del images
        full = np.load(tmp / "images.npy", mmap_mode="r")
        compact = np.lib.format.open_memmap(tmp / "images.kept.npy", mode="w+", dtype=np.uint8,
                                            shape=(len(kept), size, size, 3))
        for start in range(0, len(kept), CHUNK):
            compact[start:start + CHUNK] = full[kept[start:start + CHUNK]]
        compact.flush()
        del full, compact
        os.replace(tmp / "images.kept.npy", tmp / "images.npy")
    else:
        images.flush()
        del images
    np.save(tmp / "labels.npy", samples.labels[kept])
    np.save(tmp / "kept.npy", kept)
    np.save(tmp / "native.npy", native[kept])
    meta = {"dataset": samples.dataset, "split": samples.split, "fingerprint": samples.fingerprint,
            "size": size, "recipe": DECODE_RECIPE, "count": int(len(kept)),
            "unreadable": sorted(unreadable, key=lambda u: u["id"])}
    (tmp / "meta.json").write_text(json.dumps(meta, indent=1))


def _open_entry(path: Path, samples: Samples, size: int, skip_bad: bool) -> DecodedSplit | None:
    """The entry at `path` if it is complete and matches; None (after removing it if broken)."""
    if not path.is_dir():
        return None
    try:
        meta = json.loads((path / "meta.json").read_text())
        images = np.load(path / "images.npy", mmap_mode="r")
        labels = np.load(path / "labels.npy")
        kept = np.load(path / "kept.npy")
        native = np.load(path / "native.npy")
        count = meta["count"]
        complete = (
            meta["fingerprint"] == samples.fingerprint and meta["size"] == size
            and images.shape == (count, size, size, 3) and labels.shape == (count,) and kept.shape == (count,)
            and native.shape == (count, 2)
            and images.offset + images.nbytes == os.path.getsize(path / "images.npy")
        )
    except (OSError, ValueError, KeyError, json.JSONDecodeError) as exc:
        log.warning("image cache entry %s is unreadable (%s); rebuilding it", path, exc)
        complete = False
    if not complete:
        log.warning("image cache entry %s is stale or incomplete; rebuilding it", path)
        shutil.rmtree(path, ignore_errors=True)
        return None
    if meta["unreadable"] and not skip_bad:
        first = meta["unreadable"][0]["error"]
        raise DatasetError(f"{first} ({len(meta['unreadable'])} unreadable image(s) in {samples.dataset}/"
                           f"{samples.split}; use --skip-bad to drop them and count them)")
    dropped = Counter(samples.dropped)
    if meta["unreadable"]:
        dropped[UNREADABLE] += len(meta["unreadable"])
    return DecodedSplit(images=images, labels=labels, kept=kept, dataset=samples.dataset, split=samples.split,
                        fingerprint=samples.fingerprint, size=size, dropped=dropped, path=path, samples=samples,
                        native_hw=native)
