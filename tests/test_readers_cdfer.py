"""The CD-FER targets' readers (CK+, JAFFE, FER2013, ExpW) on tiny fixtures in their real formats,
traps included; canonical labels of named samples asserted."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from PIL import Image

from benchmark.cli import main
from benchmark.data import DATASETS, decode_split
from benchmark.core.errors import DatasetError
from benchmark.core.labels import CLASSES

from .fsdata import write_image, write_text


def label_of(samples, sample_id: str) -> str:
    return CLASSES[int(samples.labels[samples.ids.index(sample_id)])]


# -- CK+ ------------------------------------------------------------------------------------------

def ck_sequence(root, subject: str, seq: str, frames: int, code: str | None) -> None:
    for k in range(1, frames + 1):
        write_image(root / f"cohn-kanade-images/{subject}/{seq}/{subject}_{seq}_{k:08d}.png", value=10 * k)
    folder = root / f"Emotion/{subject}/{seq}"
    folder.mkdir(parents=True, exist_ok=True)  # an unlabelled sequence keeps its folder, empty
    if code is not None:
        write_text(folder / f"{subject}_{seq}_{frames:08d}_emotion.txt", f"   {code}\n")


def make_ckplus(root):
    ck_sequence(root, "S005", "001", 6, "3.0000000e+00")  # disgust
    ck_sequence(root, "S010", "002", 5, "2.0000000e+00")  # contempt: dropped whole
    ck_sequence(root, "S010", "004", 4, None)  # unlabelled: ignored
    ck_sequence(root, "S011", "001", 7, "7.0000000e+00")  # surprise
    write_text(root / "Landmarks/S005/001/S005_001_00000001_landmarks.txt", "1 2\n")  # not read
    return root


def test_ckplus_last_three_frames_carry_the_label_and_the_first_is_neutral(tmp_path):
    root = make_ckplus(tmp_path / "CK+")
    samples = DATASETS.get("ckplus").load(root, "test")
    seq = "cohn-kanade-images/S005/001/S005_001_"
    assert label_of(samples, seq + "00000001.png") == "neutral"
    assert [label_of(samples, seq + f"0000000{k}.png") for k in (4, 5, 6)] == ["disgust"] * 3
    assert seq + "00000003.png" not in samples.ids and seq + "00000002.png" not in samples.ids
    assert label_of(samples, "cohn-kanade-images/S011/001/S011_001_00000007.png") == "surprise"
    assert not any("S010" in i for i in samples.ids)  # contempt (neutral frame too) and unlabelled
    assert len(samples) == 8 and samples.dropped["non-basic class"] == 4  # contempt: 3 peaks + 1 neutral
    other = DATASETS.get("ckplus").load(root, "test", peak_frames="1", neutral_frames=0)
    assert len(other) == 2 and other.fingerprint != samples.fingerprint


def test_ckplus_is_test_only_unless_split_and_then_subject_disjoint(tmp_path):
    root = make_ckplus(tmp_path / "CK+")
    reader = DATASETS.get("ckplus")
    assert not reader.has_split(root, "train")
    with pytest.raises(DatasetError, match="no official train split.*train_fraction=0.8"):
        reader.load(root, "train")
    train = reader.load(root, "train", train_fraction=0.5, split_seed=1)
    test = reader.load(root, "test", train_fraction=0.5, split_seed=1)
    subjects = lambda s: {i.split("/")[1] for i in s.ids}  # noqa: E731
    assert subjects(train) and subjects(test) and not subjects(train) & subjects(test)
    assert len(train) + len(test) == 8
    assert reader.load(root, "test", train_fraction=0.5, split_seed=1).ids == test.ids  # seeded


def test_ckplus_bad_emotion_code_names_the_file(tmp_path):
    root = make_ckplus(tmp_path / "CK+")
    write_text(root / "Emotion/S005/001/S005_001_00000006_emotion.txt", "9.0\n")
    with pytest.raises(DatasetError, match=r"S005_001_00000006_emotion.txt:1: emotion code 9"):
        DATASETS.get("ckplus").load(root, "test")
    with pytest.raises(DatasetError, match="peak_frames='x': expected an integer"):
        DATASETS.get("ckplus").load(root, "test", peak_frames="x")


# -- JAFFE ----------------------------------------------------------------------------------------

def test_jaffe_codes_from_file_names(tmp_path):
    base = tmp_path / "JAFFE" / "jaffedbase"
    for name in ("KA.AN1.39.tiff", "KA.NE1.26.tiff", "NA.SU2.223.tiff", "YM.DI3.66.tiff", "TM.HA1.180.tiff"):
        write_image(base / name)
    write_text(base / "README", "not an image")
    samples = DATASETS.get("jaffe").load(tmp_path / "JAFFE", "test")
    assert label_of(samples, "jaffedbase/KA.AN1.39.tiff") == "anger"
    assert label_of(samples, "jaffedbase/NA.SU2.223.tiff") == "surprise"
    assert label_of(samples, "jaffedbase/YM.DI3.66.tiff") == "disgust"
    assert len(samples) == 5
    write_image(base / "KA.XX1.40.tiff")
    with pytest.raises(DatasetError, match=r"KA.XX1.40.tiff: not a JAFFE file name"):
        DATASETS.get("jaffe").load(tmp_path / "JAFFE", "test")
    assert len(DATASETS.get("jaffe").load(tmp_path / "JAFFE", "test", skip_bad=True)) == 5


# -- FER2013 --------------------------------------------------------------------------------------

def fer2013_csv(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["emotion", "pixels", "Usage"])
        for code, value, usage in rows:
            writer.writerow([code, " ".join([str(value)] * 48 * 48), usage])
    return path


def test_fer2013_kaggle_codes_and_usage_in_any_order(tmp_path):
    root = tmp_path / "FER2013"
    fer2013_csv(root / "fer2013.csv", [(0, 10, "PrivateTest"), (3, 20, "Training"), (6, 30, "PublicTest"),
                                       (5, 40, "Training"), (2, 50, "PrivateTest"), (4, 60, "Training")])
    reader = DATASETS.get("fer2013")
    train, val, test = (reader.load(root, s) for s in ("train", "val", "test"))
    assert train.ids == ["fer2013.csv#1", "fer2013.csv#3", "fer2013.csv#5"]
    assert [label_of(train, i) for i in train.ids] == ["happiness", "surprise", "sadness"]
    assert label_of(val, "fer2013.csv#2") == "neutral"
    assert [label_of(test, i) for i in test.ids] == ["anger", "fear"]
    assert int(test.pixels[1, 0, 0]) == 50  # the row's own pixels


def test_fer2013_bad_rows_name_file_and_line(tmp_path):
    root = tmp_path / "FER2013"
    fer2013_csv(root / "fer2013.csv", [(3, 20, "Training"), (8, 20, "Training")])
    with pytest.raises(DatasetError, match=r"fer2013.csv:3: label 8 is outside the code table"):
        DATASETS.get("fer2013").load(root, "train")
    fer2013_csv(root / "fer2013.csv", [(3, 20, "Training"), (3, 20, "Validation")])
    with pytest.raises(DatasetError, match=r"fer2013.csv:3: Usage 'Validation'"):
        DATASETS.get("fer2013").load(root, "train")


# -- ExpW -----------------------------------------------------------------------------------------

def make_expw(root):
    """One photograph with two faces of different labels: left half red-ish, right half blue-ish."""
    photo = np.zeros((60, 100, 3), dtype=np.uint8)
    photo[:, :50] = (200, 10, 10)
    photo[:, 50:] = (10, 10, 200)
    (root / "image/origin").mkdir(parents=True)
    Image.fromarray(photo).save(root / "image/origin/two_faces.png")
    write_image(root / "image/origin/one_face.jpg", size=(40, 40))
    # image_name face_id top left right bottom confidence label
    write_text(root / "label/label.lst", "two_faces.png 0 10 5 45 50 80.5 3\n"
                                         "two_faces.png 1 10 55 95 50 60.0 0\n"
                                         "one_face.jpg 0 0 0 40 40 20.0 6\n")
    return root


def test_expw_crops_each_face_box_and_keeps_its_own_label(tmp_path):
    root = make_expw(tmp_path / "ExpW")
    samples = DATASETS.get("expw").load(root, "test")
    assert label_of(samples, "image/origin/two_faces.png#0") == "happiness"
    assert label_of(samples, "image/origin/two_faces.png#1") == "anger"
    assert label_of(samples, "image/origin/one_face.jpg#0") == "neutral"
    decoded = decode_split(samples, 16, cache_dir=tmp_path / "cache")
    happy, angry = (decoded.read(np.array([samples.ids.index(f"image/origin/two_faces.png#{k}")]))[0] for k in (0, 1))
    assert happy[..., 0].mean() > 150 and happy[..., 2].mean() < 50  # the left box: red
    assert angry[..., 2].mean() > 150 and angry[..., 0].mean() < 50  # the right box: blue
    confident = DATASETS.get("expw").load(root, "test", min_confidence="50")
    assert len(confident) == 2 and confident.dropped["below min_confidence"] == 1
    assert confident.fingerprint != samples.fingerprint


def test_expw_bad_lines_are_named(tmp_path):
    root = make_expw(tmp_path / "ExpW")
    write_text(root / "label/label.lst", "two_faces.png 0 10 5 45 50 80.5 3\ntwo_faces.png 1 10 55 95\n")
    with pytest.raises(DatasetError, match=r"label.lst:2: expected 8 fields"):
        DATASETS.get("expw").load(root, "test")
    write_text(root / "label/label.lst", "two_faces.png 0 50 5 45 10 80.5 3\n")
    with pytest.raises(DatasetError, match=r"label.lst:1: empty face box"):
        DATASETS.get("expw").load(root, "test")
    write_text(root / "label/label.lst", "missing.jpg 0 1 1 5 5 80.5 3\none_face.jpg 0 0 0 40 40 20.0 6\n")
    with pytest.raises(DatasetError, match=r"label.lst:1: image .*missing.jpg does not exist"):
        DATASETS.get("expw").load(root, "test")
    assert DATASETS.get("expw").load(root, "test", skip_bad=True).dropped["missing file"] == 1


def test_datasets_check_reports_a_cdfer_reader(tmp_path, capsys):
    make_expw(tmp_path / "ExpW")
    manifest = tmp_path / "m.csv"
    assert main(["datasets", "check", "expw", "--data-root", str(tmp_path), "--manifest", str(manifest)]) == 0
    out = capsys.readouterr().out
    test_line = next(line for line in out.splitlines() if line.startswith("test "))
    # surprise fear disgust happiness sadness anger neutral kept
    assert test_line.split()[1:9] == ["0", "0", "0", "1", "0", "1", "1", "3"]
    assert "layout face-crops:min_confidence=0" in out and "train " not in out  # test only by default
    assert ["test", "image/origin/two_faces.png#1", "anger"] in list(csv.reader(open(manifest)))
    # a face box off its photograph (100x60) is named, with the box, not called an unreadable file
    write_text(tmp_path / "ExpW/label/label.lst", "two_faces.png 0 70 120 140 90 80.5 3\n")
    assert main(["datasets", "check", "expw", "--data-root", str(tmp_path)]) == 2
    assert "two_faces.png: face box (120, 70, 140, 90) (left, top, right, bottom) lies outside the 100x60 image" \
        in capsys.readouterr().err


def test_the_cdfer_protocol_trains_on_rafdb_and_tests_on_the_five_targets(tmp_path, capsys):
    """The shipped protocol on fixtures of all six datasets, with a tiny recipe: one job per
    method, Table 1's layout for its one source, targets in the paper's order then CD-FER's."""
    from .test_readers import make_rafdb, make_sfew

    make_rafdb(tmp_path / "RAF-DB")
    make_sfew(tmp_path / "SFEW2.0")
    make_ckplus(tmp_path / "CK+")
    for name in ("KA.AN1.39.tiff", "NA.SU2.223.tiff", "TM.HA1.180.tiff"):
        write_image(tmp_path / "JAFFE" / "jaffedbase" / name)
    fer2013_csv(tmp_path / "FER2013" / "fer2013.csv", [(3, 20, "PrivateTest"), (0, 10, "PrivateTest")])
    make_expw(tmp_path / "ExpW")
    uri = f"jsonl:{tmp_path}/runs"
    tiny = ["--protocol", "cdfer", "--data-root", str(tmp_path), "--tracking-uri", uri, "--methods", "erm",
            "--set", "backbone.name=mobilenet_v2", "--set", "backbone.weights=none", "--set", "recipe.epochs=1",
            "--set", "recipe.input_size=32", "--set", "recipe.batch_size=4", "--set", "recipe.progress=false"]
    assert main(["run", *tiny, "--dry-run"]) == 0
    assert "1 jobs, 0 already FINISHED" in capsys.readouterr().out
    assert main(["run", *tiny]) == 0
    capsys.readouterr()
    assert main(["table", "--protocol", "cdfer", "--tracking-uri", uri]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert any(line.startswith("**Trained on RAF-DB") for line in lines)
    header = next(line for line in lines if line.startswith("| Method"))
    assert [c.strip() for c in header.strip("|").split("|")] == ["Method", "RAF-DB", "SFEW2.0", "CK+", "JAFFE",
                                                                 "FER2013", "ExpW", "Mean"]
    row = next(line for line in lines if line.startswith("| erm"))
    assert "–" not in row  # every target evaluated


@pytest.mark.parametrize("name, folder, counts", [
    ("ckplus", "CK+", {"surprise": 3, "disgust": 3, "neutral": 2}),
    ("jaffe", "JAFFE", {"anger": 1, "surprise": 1}),
    ("fer2013", "FER2013", {"happiness": 1, "anger": 1}),
    ("expw", "ExpW", {"happiness": 1, "anger": 1, "neutral": 1}),
])
def test_datasets_check_reads_each_new_reader_from_the_data_root(tmp_path, capsys, name, folder, counts):
    make = {"ckplus": make_ckplus, "expw": make_expw,
            "jaffe": lambda root: [write_image(root / "jaffedbase" / n) for n in ("KA.AN1.39.tiff", "NA.SU2.223.tiff")],
            "fer2013": lambda root: fer2013_csv(root / "fer2013.csv", [(3, 20, "PrivateTest"), (0, 10, "PrivateTest"),
                                                                       (6, 5, "Training")])}
    make[name](tmp_path / folder)
    assert main(["datasets", "check", name, "--data-root", str(tmp_path), "--split", "test"]) == 0
    test_line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("test "))
    want = [counts.get(c, 0) for c in CLASSES]
    assert [int(v) for v in test_line.split()[1:9]] == [*want, sum(want)]
