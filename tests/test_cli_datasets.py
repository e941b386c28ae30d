"""`benchmark datasets list|check` end to end through the CLI entry point."""

from __future__ import annotations

import csv

from benchmark.cli import main

from .fsdata import write_image
from .test_readers import make_fer2013_csv, make_rafdb


def test_datasets_list_names_readers_and_folders(capsys):
    assert main(["datasets", "list"]) == 0
    out = capsys.readouterr().out
    for expected in ("rafdb", "RAF-DB/", "ferplus", "FERPlus/", "affectnet", "AffectNet/", "sfew", "SFEW2.0/",
                     "mma", "MMA/", "imagefolder", "list", "synth5/film"):
        assert expected in out


def test_check_prints_counts_drops_layout_fingerprint_and_writes_manifest(tmp_path, capsys):
    root = make_rafdb(tmp_path / "RAF-DB")
    (root / "basic/Image/aligned/train_00003_aligned.jpg").write_bytes(b"broken")
    manifest = tmp_path / "m.csv"
    code = main(["datasets", "check", "rafdb", "--data-root", str(tmp_path), "--skip-bad", "--manifest", str(manifest)])
    assert code == 0
    out = capsys.readouterr().out
    assert "unreadable image: 1" in out and "layout official-aligned" in out and "fingerprint" in out
    train_line = next(line for line in out.splitlines() if line.startswith("train "))
    # surprise fear disgust happiness sadness anger neutral kept: one sadness, one surprise kept
    assert train_line.split()[1:9] == ["1", "0", "0", "0", "1", "0", "0", "2"]
    with open(manifest, newline="") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == ["split", "path", "label"]
    assert ["train", "basic/Image/aligned/train_00001_aligned.jpg", "sadness"] in rows
    assert not any("train_00003" in r[1] for r in rows) and len(rows) == 1 + 2 + 2


def test_check_without_skip_bad_fails_naming_the_file(tmp_path, capsys):
    root = make_rafdb(tmp_path / "RAF-DB")
    (root / "basic/Image/aligned/test_0002_aligned.jpg").write_bytes(b"broken")
    assert main(["datasets", "check", "rafdb", "--root", str(root)]) == 2
    assert "test_0002_aligned.jpg: unreadable image" in capsys.readouterr().err


def test_check_pixel_csv_manifest_uses_row_references(tmp_path, capsys):
    root = make_fer2013_csv(tmp_path / "FERPlus")
    manifest = tmp_path / "m.csv"
    assert main(["datasets", "check", "ferplus", "--root", str(root), "--manifest", str(manifest)]) == 0
    rows = list(csv.reader(open(manifest)))
    assert ["test", "fer2013.csv#5", "fear"] in rows
    assert "no face: 1" in capsys.readouterr().out


def test_check_synth5_domain_and_missing_root_message(tmp_path, capsys):
    assert main(["datasets", "check", "synth5/webcam", "--split", "val", "--option", "scale=0.05"]) == 0
    assert "layout generated:seed0:scale0.05" in capsys.readouterr().out
    assert main(["datasets", "check", "mma"]) == 2
    assert "--data-root" in capsys.readouterr().err


def test_check_imagefolder_bad_option(tmp_path, capsys):
    write_image(tmp_path / "x/train/happy/a.png")
    assert main(["datasets", "check", "imagefolder", "--root", str(tmp_path / "x"), "--option", "colour=1"]) == 2
    assert "unknown option(s) colour" in capsys.readouterr().err
