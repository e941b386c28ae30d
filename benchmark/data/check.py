"""`benchmark datasets check`: read every split of one dataset and report what was found."""

from __future__ import annotations

import csv
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from tabulate import tabulate

from ..core.errors import DatasetError
from ..core.labels import CLASSES
from .base import DATASETS
from .cache import native_image
from .samples import UNREADABLE, Samples, printable_id


@dataclass
class SplitReport:
    samples: Samples
    unreadable: list[str]  # ids of files that failed to decode (dropped with --skip-bad)

    @property
    def kept_ids(self) -> list[tuple[str, int]]:
        bad = set(self.unreadable)
        return [(i, int(y)) for i, y in zip(self.samples.ids, self.samples.labels) if i not in bad]


def find_unreadable(samples: Samples, workers: int | None = None) -> list[str]:
    """Ids of the images that do not decode, or whose face box misses the image (in-memory pixels
    are always readable)."""
    if samples.pixels is not None:
        return []

    def bad(i: int) -> str | None:
        try:
            native_image(samples, i)  # decodes, and crops where the samples carry face boxes
            return None
        except DatasetError:
            return samples.ids[i]

    with ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool:
        return [i for i in pool.map(bad, range(len(samples))) if i is not None]


def check_dataset(name: str, root: Path | None, splits: Iterable[str] | None = None, *, skip_bad: bool = False,
                  verify: bool = True, options: dict[str, Any] | None = None) -> list[SplitReport]:
    reader = DATASETS.get(name)
    reports = []
    options = options or {}
    for split in splits or [s for s in reader.splits if reader.has_split(root, s, **options)]:
        samples = reader.load(root, split, skip_bad=skip_bad, **options)
        unreadable = find_unreadable(samples) if verify else []
        if unreadable:
            if not skip_bad:  # the first one's own reason: an undecodable file, or a face box off the image
                try:
                    native_image(samples, samples.ids.index(unreadable[0]))
                    reason = f"{samples.root / unreadable[0]}: unreadable image"
                except DatasetError as exc:
                    reason = str(exc)
                raise DatasetError(f"{reason} ({len(unreadable)} in {name}/{split}; use --skip-bad to drop them "
                                   "and count them)")
            samples.dropped[UNREADABLE] += len(unreadable)
        reports.append(SplitReport(samples, unreadable))
    return reports


def format_report(name: str, reports: list[SplitReport]) -> str:
    rows = []
    for report in reports:
        s = report.samples
        counts = dict.fromkeys(CLASSES, 0)
        for _, label in report.kept_ids:
            counts[CLASSES[label]] += 1
        dropped = ", ".join(f"{reason}: {n}" for reason, n in sorted(s.dropped.items()) if n) or "none"
        rows.append([s.split, *counts.values(), sum(counts.values()), dropped])
    table = tabulate(rows, headers=["split", *CLASSES, "kept", "dropped"], tablefmt="simple")
    lines = [f"{name}: {reports[0].samples.root}", table, ""]
    for report in reports:
        s = report.samples
        lines.append(f"{s.split}: layout {s.variant}, fingerprint {s.fingerprint}")
        lines.extend(f"  warning: {w}" for w in s.warnings)
        lines.extend(f"  unreadable: {u}" for u in report.unreadable[:10])
    return "\n".join(lines)


def write_manifest(path: Path, reports: list[SplitReport]) -> int:
    """CSV `split,path,label` of every kept sample; returns the row count."""
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["split", "path", "label"])
        for report in reports:
            for sample_id, label in report.kept_ids:
                writer.writerow([report.samples.split, printable_id(sample_id), CLASSES[label]])
                n += 1
    return n


def slice_report(name: str, root: Path | None, samples: Samples) -> list[str]:
    """One line per slice of the dataset's test split (corruptions aside: each is the whole split):
    its size, or why it cannot be cut here; then every entry of its source that names no image."""
    from .slices import SLICE_FAMILIES

    lines = []
    for family_name in SLICE_FAMILIES.names():
        family = SLICE_FAMILIES.get(family_name)
        for slice_name in family.names(name):
            if "@" in slice_name:
                continue
            try:
                size = len(family.apply(samples, root, slice_name))
                missing = family.missing(samples, root, slice_name)
            except DatasetError as exc:
                lines.append(f"  {name}:{slice_name}: not available ({exc})")
                continue
            lines.append(f"  {name}:{slice_name}: {size} images" + (f", {len(missing)} list entries name no "
                                                                  "image:" if missing else ""))
            lines.extend(f"    {m}" for m in missing[:20])
            if len(missing) > 20:
                lines.append(f"    ... and {len(missing) - 20} more")
    return lines
