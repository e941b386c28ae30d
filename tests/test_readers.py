"""Every reader on tiny data in its real on-disk format: labels, splits, drops, bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from benchmark.data import DATASETS
from benchmark.core.errors import DatasetError
from benchmark.core.labels import CLASSES

from .fsdata import write_image, write_text


def load(name: str, root: Path, split: str, **kw):
    return DATASETS.get(name).load(root, split, **kw)


def labels_by_id(samples) -> dict[str, str]:
    return {i: CLASSES[y] for i, y in zip(samples.ids, samples.labels)}


# ---------------------------------------------------------------------------------------- RAF-DB
def make_rafdb(root: Path) -> Path:
    lines = ["train_00001.jpg 5", "train_00002.jpg 1", "train_00003.jpg 7", "test_0001.jpg 4", "test_0002.jpg 6"]
    write_text(root / "basic/EmoLabel/list_patition_label.txt", "\n".join(lines) + "\n")
    for line in lines:
        stem = Path(line.split()[0]).stem
        write_image(root / f"basic/Image/aligned/{stem}_aligned.jpg")
        write_image(root / f"basic/Image/original/{stem}.jpg")
    return root


def test_rafdb_official_labels_are_native_minus_one(tmp_path):
    root = make_rafdb(tmp_path / "RAF-DB")
    train = load("rafdb", root, "train")
    assert labels_by_id(train) == {
        "basic/Image/aligned/train_00001_aligned.jpg": "sadness",   # native 5
        "basic/Image/aligned/train_00002_aligned.jpg": "surprise",  # native 1
        "basic/Image/aligned/train_00003_aligned.jpg": "neutral",   # native 7
    }
    test = load("rafdb", root, "test")
    assert sorted(labels_by_id(test).values()) == ["anger", "happiness"]
    assert train.variant == "official-aligned"
    # The official split counts differ from these toy ones: a warning, not an error.
    assert any("differ from the official" in w for w in train.warnings)


def test_rafdb_original_variant_and_no_val_split(tmp_path):
    root = make_rafdb(tmp_path / "RAF-DB")
    original = load("rafdb", root, "train", variant="original")
    assert original.ids[0] == "basic/Image/original/train_00001.jpg"
    with pytest.raises(DatasetError, match="rafdb has no 'val' split"):
        load("rafdb", root, "val")
    with pytest.raises(DatasetError, match="unknown option"):
        load("rafdb", root, "train", varient="original")


def test_rafdb_repackaged_folders_named_by_native_code_or_name(tmp_path):
    root = tmp_path / "RAF-DB"
    write_image(root / "train/1/a.jpg")
    write_image(root / "train/7/b.jpg")
    write_image(root / "train/happy/c.jpg")
    samples = load("rafdb", root, "train")
    assert labels_by_id(samples) == {"train/1/a.jpg": "surprise", "train/7/b.jpg": "neutral",
                                     "train/happy/c.jpg": "happiness"}


def test_rafdb_bad_label_value_names_file_line_and_value(tmp_path):
    root = make_rafdb(tmp_path / "RAF-DB")
    label_file = root / "basic/EmoLabel/list_patition_label.txt"
    label_file.write_text("train_00001.jpg 5\ntrain_00002.jpg 9\n")
    with pytest.raises(DatasetError, match=r"list_patition_label.txt:2: label 9 is outside the code table"):
        load("rafdb", root, "train")


def test_missing_image_names_file_and_line_or_is_skipped_and_counted(tmp_path):
    root = make_rafdb(tmp_path / "RAF-DB")
    (root / "basic/Image/aligned/train_00002_aligned.jpg").unlink()
    with pytest.raises(DatasetError, match=r"list_patition_label.txt:2: image .*train_00002_aligned.jpg does not exist"):
        load("rafdb", root, "train")
    samples = load("rafdb", root, "train", skip_bad=True)
    assert len(samples) == 2 and samples.dropped["missing file"] == 1


def test_missing_folder_names_path_and_layout(tmp_path):
    with pytest.raises(DatasetError, match=r"nowhere: not a RAF-DB folder; expected basic/EmoLabel"):
        load("rafdb", tmp_path / "nowhere", "train")


# --------------------------------------------------------------------------------------- FERPlus
VOTE_ROWS = [  # image, votes over neutral,happiness,surprise,sadness,anger,disgust,fear,contempt,unknown,NF
    ("fer0000000.png", [0, 8, 1, 0, 0, 0, 1, 0, 0, 0], "happiness"),
    ("fer0000001.png", [4, 4, 0, 0, 0, 0, 0, 0, 2, 0], "neutral"),  # tie -> earlier column
    ("fer0000002.png", [0, 0, 0, 0, 0, 0, 0, 6, 4, 0], None),        # contempt wins: dropped
    ("fer0000003.png", [0, 0, 0, 0, 0, 0, 0, 0, 0, 10], None),       # NF wins: no face
    ("fer0000004.png", [0, 0, 0, 0, 2, 7, 1, 0, 0, 0], "disgust"),
    ("fer0000005.png", [0, 0, 3, 0, 0, 0, 7, 0, 0, 0], "fear"),
]


def make_ferplus_folders(root: Path) -> Path:
    for folder in ("FER2013Train", "FER2013Valid", "FER2013Test"):
        lines = []
        for name, votes, _ in VOTE_ROWS:
            write_image(root / folder / name, grey=True, size=(48, 48))
            lines.append(f'{name},"(0, 0, 48, 48)",' + ",".join(map(str, votes)))
        write_text(root / folder / "label.csv", "\n".join(lines) + "\n")
    return root


def test_ferplus_folders_majority_vote_and_drops(tmp_path):
    root = make_ferplus_folders(tmp_path / "FERPlus")
    samples = load("ferplus", root, "test")
    expected = {f"FER2013Test/{n}": lab for n, _, lab in VOTE_ROWS if lab}
    assert labels_by_id(samples) == expected
    assert samples.dropped == {"non-basic class": 1, "no face": 1}
    assert load("ferplus", root, "val").ids[0].startswith("FER2013Valid/")
    assert samples.variant == "png-folders"


def make_fer2013_csv(root: Path) -> Path:
    usages = ["Training", "Training", "PublicTest", "PrivateTest", "PrivateTest", "PrivateTest", "Training"]
    rows = VOTE_ROWS + [("", [0, 10, 0, 0, 0, 0, 0, 0, 0, 0], None)]  # empty image name: no face
    rows = [rows[0], rows[4], rows[1], rows[0], rows[2], rows[5], rows[6]]
    pixel_lines = ["emotion,pixels,Usage"]
    vote_lines = ["Usage,Image name,neutral,happiness,surprise,sadness,anger,disgust,fear,contempt,unknown,NF"]
    for i, ((name, votes, _), usage) in enumerate(zip(rows, usages)):
        pixel_lines.append(f"3,{' '.join([str(i * 10)] * 2304)},{usage}")
        vote_lines.append(f"{usage},{name}," + ",".join(map(str, votes)))
    write_text(root / "fer2013.csv", "\n".join(pixel_lines) + "\n")
    write_text(root / "fer2013new.csv", "\n".join(vote_lines) + "\n")
    return root


def test_ferplus_pixel_csv_rows_and_manifest_ids(tmp_path):
    root = make_fer2013_csv(tmp_path / "FERPlus")
    train = load("ferplus", root, "train")
    assert labels_by_id(train) == {"fer2013.csv#0": "happiness", "fer2013.csv#1": "disgust"}
    assert train.dropped["no face"] == 1
    assert train.pixels.shape == (2, 48, 48) and int(train.pixels[1, 0, 0]) == 10
    test = load("ferplus", root, "test")
    assert labels_by_id(test) == {"fer2013.csv#3": "happiness", "fer2013.csv#5": "fear"}
    assert test.dropped["non-basic class"] == 1
    assert load("ferplus", root, "val").ids == ["fer2013.csv#2"]


def test_ferplus_pixel_csv_misaligned_files_fail(tmp_path):
    root = make_fer2013_csv(tmp_path / "FERPlus")
    votes = (root / "fer2013new.csv").read_text().splitlines()
    (root / "fer2013new.csv").write_text("\n".join(votes[:-1]) + "\n")
    with pytest.raises(DatasetError, match="fer2013.csv: has more rows than its partner"):
        load("ferplus", root, "train")


def test_ferplus_bad_vote_row_names_line(tmp_path):
    root = make_ferplus_folders(tmp_path / "FERPlus")
    with open(root / "FER2013Train/label.csv", "a") as fh:
        fh.write('fer0000009.png,"(0, 0, 48, 48)",1,2,x,0,0,0,0,0,0,0\n')
    with pytest.raises(DatasetError, match=r"FER2013Train/label.csv:7: vote counts must be numbers"):
        load("ferplus", root, "train")


# ------------------------------------------------------------------------------------- AffectNet
AFFECT_HEADER = "subDirectory_filePath,face_x,face_y,face_width,face_height,facial_landmarks,expression,valence,arousal"


def make_affectnet(root: Path, codes: list[int]) -> Path:
    for list_name in ("training.csv", "validation.csv"):
        lines = [AFFECT_HEADER]
        for i, code in enumerate(codes):
            rel = f"{i}/{list_name[0]}{i}.jpg"
            write_image(root / "Manually_Annotated_Images" / rel)
            lines.append(f'{rel},0,0,10,10,"1;2;3",{code},0.1,0.2')
        write_text(root / "Manually_Annotated_file_lists" / list_name, "\n".join(lines) + "\n")
    return root


def test_affectnet_official_code_map_and_drops(tmp_path):
    codes = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10]
    root = make_affectnet(tmp_path / "AffectNet", codes)
    samples = load("affectnet", root, "train")
    got = [CLASSES[y] for y in samples.labels]
    assert got == ["neutral", "happiness", "sadness", "surprise", "fear", "disgust", "anger"]
    assert samples.dropped == {"non-basic class": 3, "no face": 1}
    test = load("affectnet", root, "test")
    assert test.ids[0] == "Manually_Annotated_Images/0/v0.jpg"


def test_affectnet_code_outside_table(tmp_path):
    root = make_affectnet(tmp_path / "AffectNet", [0, 12])
    with pytest.raises(DatasetError, match=r"training.csv:3: label 12 is outside the code table"):
        load("affectnet", root, "train")


def test_affectnet_repackaged_folders(tmp_path):
    root = tmp_path / "AffectNet"
    write_image(root / "train/0/a.jpg")
    write_image(root / "train/7/b.jpg")
    write_image(root / "val/3/c.jpg")
    write_image(root / "val/Happy/d.jpg")
    train = load("affectnet", root, "train")
    assert labels_by_id(train) == {"train/0/a.jpg": "neutral"} and train.dropped["non-basic class"] == 1
    assert labels_by_id(load("affectnet", root, "test")) == {"val/3/c.jpg": "surprise", "val/Happy/d.jpg": "happiness"}


# ------------------------------------------------------------------------------------------ SFEW
def make_sfew(root: Path) -> Path:
    for split in ("Train", "Val"):
        for cls in ("Angry", "Disgust", "Fear", "Happy", "Neutral", "Sad", "Surprise"):
            write_image(root / split / cls / f"{cls}_1.png")
    return root


def test_sfew_val_is_test_and_aligned_preferred(tmp_path):
    root = make_sfew(tmp_path / "SFEW2.0")
    test = load("sfew", root, "test")
    assert labels_by_id(test)["Val/Neutral/Neutral_1.png"] == "neutral"
    assert labels_by_id(test)["Val/Angry/Angry_1.png"] == "anger"
    assert test.variant == "original:Val"
    write_image(root / "Val_Aligned_Faces/Sad/x.png")
    aligned = load("sfew", root, "test")
    assert aligned.variant == "aligned:Val_Aligned_Faces" and labels_by_id(aligned) == {"Val_Aligned_Faces/Sad/x.png": "sadness"}
    assert load("sfew", root, "test", variant="original").variant == "original:Val"


def test_unknown_class_folder_is_an_error_not_folder_order(tmp_path):
    root = tmp_path / "SFEW2.0"
    write_image(root / "Train/Angry/a.png")
    write_image(root / "Train/Bored/b.png")
    with pytest.raises(DatasetError, match=r"Bored: class folder 'Bored' is not an expression name"):
        load("sfew", root, "train")


# ------------------------------------------------------------------------------------------- MMA
@pytest.mark.parametrize("top", ["", "MMAFEDB/"])
def test_mma_with_or_without_top_folder(tmp_path, top):
    root = tmp_path / "MMA"
    for split in ("train", "valid", "test"):
        for cls in ("angry", "disgust", "fear", "happy", "neutral", "sad", "surprise"):
            write_image(root / f"{top}{split}/{cls}/1.jpg", grey=True)
    val = load("mma", root, "val")
    assert labels_by_id(val)[f"{top}valid/neutral/1.jpg"] == "neutral"
    assert labels_by_id(val)[f"{top}valid/surprise/1.jpg"] == "surprise"
    assert len(load("mma", root, "train")) == 7


# --------------------------------------------------------------------------------------- generic
def test_imagefolder_drops_contempt_and_counts(tmp_path):
    root = tmp_path / "mine"
    write_image(root / "train/fearful/a.png")
    write_image(root / "train/contempt/b.png")
    samples = load("imagefolder", root, "train")
    assert labels_by_id(samples) == {"train/fearful/a.png": "fear"}
    assert samples.dropped == {"non-basic class": 1}


def test_list_reader_with_declared_order(tmp_path):
    root = tmp_path / "lst"
    for name in ("a.jpg", "b.jpg", "c.jpg"):
        write_image(root / "img" / name)
    write_text(root / "train.txt", "img/a.jpg 0\nimg/b.jpg 4\nimg/c.jpg happy\n")
    order = "angry,disgust,fear,happy,neutral,sad,surprise"
    samples = load("list", root, "train", label_order=order)
    assert labels_by_id(samples) == {"img/a.jpg": "anger", "img/b.jpg": "neutral", "img/c.jpg": "happiness"}
    with pytest.raises(DatasetError, match=r"train.txt:2: label 4 is outside the code table"):
        load("list", root, "train", label_order="angry,disgust,fear,happy")


def test_fingerprint_changes_with_labels_not_with_location(tmp_path):
    root = make_rafdb(tmp_path / "a" / "RAF-DB")
    before = load("rafdb", root, "test").fingerprint
    moved = tmp_path / "b" / "RAF-DB"
    moved.parent.mkdir()
    root.rename(moved)
    assert load("rafdb", moved, "test").fingerprint == before
    label_file = moved / "basic/EmoLabel/list_patition_label.txt"
    label_file.write_text(label_file.read_text().replace("test_0001.jpg 4", "test_0001.jpg 3"))
    assert load("rafdb", moved, "test").fingerprint != before
    assert np.array_equal(load("rafdb", moved, "test").labels, [2, 5])


def test_bgr_channel_order_swaps_the_evaluated_images_and_changes_the_hash(tmp_path):
    import copy


    from benchmark.data import decode_split
    from benchmark.core.errors import BenchmarkError
    from benchmark.jobs.plan import DataPlan, expand
    from benchmark.jobs.protocol import load_protocol

    protocol = load_protocol("synth5")
    bgr_options = copy.deepcopy(protocol.dataset_options)
    bgr_options["synth5/film"]["channel_order"] = "bgr"
    rgb_plan, bgr_plan = DataPlan(options=protocol.dataset_options), DataPlan(options=bgr_options)
    rgb, bgr = rgb_plan.samples("synth5/film", "test"), bgr_plan.samples("synth5/film", "test")
    assert rgb.fingerprint != bgr.fingerprint
    assert rgb_plan.samples("synth5/film", "train").fingerprint == bgr_plan.samples("synth5/film", "train").fingerprint
    a, b = decode_split(rgb, 16, cache_dir=tmp_path), decode_split(bgr, 16, cache_dir=tmp_path)
    np.testing.assert_array_equal(a.read(slice(None))[..., ::-1], b.read(slice(None)))
    assert not np.array_equal(a.read(slice(None)), b.read(slice(None)))
    rgb_hashes = {j.hash for j in expand(protocol, ["erm"], rgb_plan)}
    assert rgb_hashes.isdisjoint({j.hash for j in expand(protocol, ["erm"], bgr_plan)})
    bgr_options["synth5/film"]["channel_order"] = "brg"
    with pytest.raises(BenchmarkError, match="dataset_options.synth5/film.channel_order = 'brg'"):
        DataPlan(options=bgr_options).samples("synth5/film", "test")


def test_a_file_name_that_is_not_utf8_is_read_fingerprinted_and_written(tmp_path):
    import os

    from benchmark.cli import main
    from benchmark.data import decode_split

    root = tmp_path / "mine"
    odd = os.fsdecode(b"caf\xe9.png")  # a Latin-1 name, as old SFEW and MMA archives hold
    write_image(root / "train" / "happy" / odd)
    write_image(root / "train" / "sad" / "plain.png")
    samples = load("imagefolder", root, "train")
    assert len(samples) == 2 and samples.fingerprint
    assert decode_split(samples, 8, cache_dir=tmp_path / "cache").read(slice(None)).shape == (2, 8, 8, 3)
    manifest = tmp_path / "manifest.csv"
    assert main(["datasets", "check", "imagefolder", "--root", str(root), "--split", "train",
                 "--manifest", str(manifest)]) == 0
    assert "train/happy/caf\\xe9.png" in manifest.read_text(encoding="utf-8")


def test_a_label_file_that_is_not_utf8_is_refused_naming_file_and_line(tmp_path):
    root = tmp_path / "lst"
    write_image(root / "img" / "a.jpg")
    (root / "train.txt").write_bytes(b"img/a.jpg 0\nimg/caf\xe9.jpg 1\n")
    with pytest.raises(DatasetError, match=r"train.txt:2: not UTF-8 text \(byte 0xe9 at column 8\)"):
        load("list", root, "train")


@pytest.mark.parametrize("document", ["README.md", "docs/datasets.md"])
def test_the_documented_synth5_table_is_what_the_code_builds(document):
    import re

    from benchmark.data.synth5 import DOMAINS

    readme = (Path(__file__).resolve().parents[1] / document).read_text()
    rows = {m.group(1): (m.group(2), m.group(3)) for m in re.finditer(
        r"^\| `synth5/(\w+)` \|[^\n]*\| (\d+/\d+/\d+) \| (\d+%|0) \|$", readme, re.MULTILINE)}
    assert set(rows) == set(DOMAINS)
    for name, style in DOMAINS.items():
        counts, noise = rows[name]
        assert counts == "/".join(str(style.counts[s]) for s in ("train", "val", "test")), name
        assert noise == (f"{round(100 * style.label_noise)}%" if style.label_noise else "0"), name
