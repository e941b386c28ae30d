"""The training split of a multi-source job: several decoded splits as one, each sample keeping
its domain (the index of the dataset it came from in `domain_names`).

The union is written once as its own cache entry (`<cache>/images/union/...`), a copy of its
parts' images, so the trainer reads it like any split (one memory-mapped array, positioned
reads, the same prefetch and device-resident paths). Its key hashes the parts' fingerprints in
order, how many images each kept, the decoding recipe and the size; the disk cost is the parts'
size once more.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np

from ..core.paths import cache_dir as default_cache_dir
from ..core.sources import join
from .cache import DECODE_RECIPE, DecodedSplit

CHUNK = 1024


def union_split(parts: list[DecodedSplit], cache_dir: Path | None = None) -> DecodedSplit:
    """`parts` as one split (the only part itself when there is one)."""
    if len(parts) == 1:
        return parts[0]
    sizes = {p.size for p in parts}
    if len(sizes) != 1:
        raise ValueError(f"parts decoded at different sizes {sorted(sizes)}")
    size = sizes.pop()
    # The parts' data, what was kept of each and how it was decoded: a new decoding recipe is a new entry.
    key = "|".join(f"{p.fingerprint}:{len(p)}" for p in parts) + f"|{DECODE_RECIPE}"
    fingerprint = hashlib.sha256(key.encode()).hexdigest()[:16]
    names = tuple(p.dataset for p in parts)
    split = "+".join(dict.fromkeys(p.split for p in parts))
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    final = folder / "images" / "union" / f"{split}-{size}px-{fingerprint}"
    if not (final / "meta.json").is_file():
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=final.name + ".tmp-", dir=final.parent))
        try:
            _write(tmp, parts, size)
            try:
                os.rename(tmp, final)
            except OSError:  # another process wrote the same union first
                shutil.rmtree(tmp, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    count = sum(len(p) for p in parts)
    images = np.load(final / "images.npy", mmap_mode="r")
    if images.shape != (count, size, size, 3):
        raise ValueError(f"{final}: holds {images.shape[0]} images, its parts {count}; delete it to rebuild")
    dropped: Counter = Counter()
    for p in parts:
        dropped.update(p.dropped)
    natives = [p.native_hw if p.native_hw is not None else np.zeros((len(p), 2), np.int32) for p in parts]
    return DecodedSplit(images=images, labels=np.concatenate([p.labels for p in parts]),
                        kept=np.arange(count), dataset=join(list(names)), split=split, fingerprint=fingerprint,
                        size=size, dropped=dropped, path=final, native_hw=np.concatenate(natives),
                        domains=np.repeat(np.arange(len(parts)), [len(p) for p in parts]), domain_names=names)


def _write(tmp: Path, parts: list[DecodedSplit], size: int) -> None:
    count = sum(len(p) for p in parts)
    images = np.lib.format.open_memmap(tmp / "images.npy", mode="w+", dtype=np.uint8, shape=(count, size, size, 3))
    at = 0
    for part in parts:
        for begin in range(0, len(part), CHUNK):
            block = part.read(slice(begin, min(len(part), begin + CHUNK)))
            images[at:at + len(block)] = block
            at += len(block)
    images.flush()
    del images
    meta = {"parts": [{"dataset": p.dataset, "split": p.split, "fingerprint": p.fingerprint, "count": len(p)}
                      for p in parts], "size": size}
    (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
