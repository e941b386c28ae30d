"""Slices (benchmark.data.slices) on fixtures in the released formats, synth5's slices against what its
generator drew, corruptions against the package itself, and the group, worst-group and mCE
arithmetic of the tables against direct computations."""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pandas as pd
import pytest

from benchmark.core.errors import BenchmarkError, DatasetError
from benchmark.data import decode_split
from benchmark.data.check import slice_report
from benchmark.data.slices.base import image_key
from benchmark.data.slices.corruptions import Corruption, package_version
from benchmark.data.synth5 import DOMAINS, generate_split
from benchmark.jobs.plan import DataPlan
from benchmark.report import slices, tables

from .fsdata import write_image, write_text
from .test_readers import make_ferplus_folders, make_rafdb
from .test_tables import markdown_rows


def rafdb_with_lists(tmp_path):
    root = make_rafdb(tmp_path / "RAF-DB")
    for k in range(3, 6):  # three more test images, so a slice is a proper subset
        write_image(root / f"basic/Image/aligned/test_000{k}_aligned.jpg", value=40 * k)
    label_file = root / "basic/EmoLabel/list_patition_label.txt"
    label_file.write_text(label_file.read_text() + "test_0003.jpg 1\ntest_0004.jpg 2\ntest_0005.jpg 3\n")
    # RAN's released formats: "<name> <label> <occlusion type>", and "<label>/<name>.jpg"
    write_text(root / "basic/EmoLabel/rafdb_occlusion_list.txt",
               "test_0001_aligned 3 4\ntest_0004_aligned 1 2\ntest_0004_aligned 1 2\ntest_0099_aligned 0 1\n")
    write_text(root / "basic/EmoLabel/val_raf_db_list.txt", "0/test_0002_aligned.jpg\n3/test_0005_aligned.jpg\n")
    return root


def write_attributes(root, name: str, gender: int, race: int, age: int) -> None:
    landmarks = "\n".join(f"{10 + i}.5 {20 + i}.25" for i in range(5))
    write_text(root / f"basic/Annotation/manual/{name}_manu_attri.txt", f"{landmarks}\n{gender}\n{race}\n{age}\n")


def test_a_ran_list_slice_is_exactly_its_listed_test_images_and_check_names_the_missing_entry(tmp_path):
    root = rafdb_with_lists(tmp_path)
    plan = DataPlan(dataset_paths={"rafdb": str(root)})
    occlusion = plan.samples("rafdb:occlusion", "test")
    assert occlusion.dataset == "rafdb:occlusion"
    assert occlusion.ids == ["basic/Image/aligned/test_0001_aligned.jpg", "basic/Image/aligned/test_0004_aligned.jpg"]
    full = plan.samples("rafdb", "test")
    assert list(occlusion.labels) == [full.labels[full.ids.index(i)] for i in occlusion.ids]  # the dataset's labels
    assert plan.samples("rafdb:pose30", "test").ids == ["basic/Image/aligned/test_0002_aligned.jpg",
                                                        "basic/Image/aligned/test_0005_aligned.jpg"]
    assert occlusion.fingerprint != full.fingerprint
    report = "\n".join(slice_report("rafdb", root, full))
    assert "rafdb:occlusion: 2 images, 1 list entries name no image:" in report
    assert "rafdb_occlusion_list.txt:4: test_0099 is not an image of the test split" in report
    assert "rafdb:pose45: not available (rafdb:pose45: val_raf_db_list_45.txt not found" in report
    with pytest.raises(DatasetError, match=r"rafdb_occlusion_list.txt:2: expected an image name"):
        write_text(root / "basic/EmoLabel/rafdb_occlusion_list.txt", "test_0001_aligned 3 4\n, ,\n")
        DataPlan(dataset_paths={"rafdb": str(root)}).samples("rafdb:occlusion", "test")


def test_ferplus_lists_match_png_folders_and_the_pixel_table_by_image_name(tmp_path):
    root = make_ferplus_folders(tmp_path / "FERPlus")
    write_text(root / "jianfei_occlusion_list.txt", "1_fer0000001.png 8 0\n3_fer0000004.png 8 2\n")
    occlusion = DataPlan(dataset_paths={"ferplus": str(root)}).samples("ferplus:occlusion", "test")
    assert occlusion.ids == ["FER2013Test/fer0000001.png", "FER2013Test/fer0000004.png"]
    assert image_key("fer2013.csv#32222") == "fer0032222" == image_key("2_fer0032222.png")
    assert image_key("Manually_Annotated_Images/12/a1b2c3.jpg") == "a1b2c3" == image_key("12/a1b2c3.jpg")


def test_rafdb_groups_from_the_manual_attribute_files_and_a_malformed_one_named_with_its_line(tmp_path):
    root = rafdb_with_lists(tmp_path)
    for k, (gender, race, age) in enumerate([(1, 2, 2), (0, 0, 3), (1, 1, 0), (2, 2, 4), (0, 2, 2)], start=1):
        write_attributes(root, f"test_000{k}", gender, race, age)
    plan = DataPlan(dataset_paths={"rafdb": str(root)})
    keys = lambda name: [image_key(i) for i in plan.samples(name, "test").ids]  # noqa: E731
    assert keys("rafdb:gender=female") == ["test_0001", "test_0003"]
    assert keys("rafdb:race=asian") == ["test_0001", "test_0004", "test_0005"]
    assert keys("rafdb:age=70+") == ["test_0004"]
    write_text(root / "basic/Annotation/manual/test_0002_manu_attri.txt",
               "\n".join(["1 2"] * 5) + "\n0\n7\n3\n")
    with pytest.raises(DatasetError, match=r"test_0002_manu_attri.txt:7: race must be one of 0..2"):
        DataPlan(dataset_paths={"rafdb": str(root)}).samples("rafdb:race=asian", "test")
    (root / "basic/Annotation/manual/test_0002_manu_attri.txt").unlink()
    with pytest.raises(DatasetError, match=r"test_0002_manu_attri.txt: not found"):
        DataPlan(dataset_paths={"rafdb": str(root)}).samples("rafdb:gender=male", "test")


def test_synth5_slices_are_the_images_its_generator_marked():
    """Occluded: the images whose occluder stage changed the picture (seen through the generator's
    own trace, not through the recorded attributes); the generator's bytes are unchanged by recording."""
    style, scale = DOMAINS["wild"], 0.1
    count = int(round(style.counts["test"] * scale))
    before: dict[int, np.ndarray] = {}
    drawn: set[int] = set()

    def trace(i, stage, image):
        if stage == "rotation":
            before[i] = np.asarray(image).copy()
        elif stage == "occluder" and not np.array_equal(before[i], np.asarray(image)):
            drawn.add(i)

    images, _ = generate_split(style, "test", 0, count, trace=trace)
    recorded: list = []
    again, _ = generate_split(style, "test", 0, count, attributes=recorded)
    assert again.tobytes() == images.tobytes() and len(recorded) == count
    plan = DataPlan(options={"synth5/wild": {"scale": scale}})
    occluded = plan.samples("synth5/wild:occluded", "test")
    assert drawn and sorted(int(i.split("#")[1]) for i in occluded.ids) == sorted(drawn)
    pose = plan.samples("synth5/wild:pose30", "test")
    assert sorted(int(i.split("#")[1]) for i in pose.ids) == [k for k, a in enumerate(recorded) if abs(a["yaw"]) >= 1 / 3]
    with pytest.raises(DatasetError, match="no test image of this domain is group=glasses"):
        plan.samples("synth5/wild:group=glasses", "test")
    with pytest.raises(DatasetError, match=r"unknown slice 'synth5/wild:pose45'; synth5/wild offers: .*occluded"):
        plan.samples("synth5/wild:pose45", "test")


def test_corrupted_pixels_are_the_packages_own_and_the_same_in_two_runs(tmp_path):
    import imagecorruptions

    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    for name in ("gaussian_noise", "motion_blur", "frost", "jpeg_compression"):
        corruption = Corruption(name, 3, package_version())
        np.random.seed(corruption.seed("a#1"))
        direct = np.uint8(imagecorruptions.corrupt(image, corruption_name=name, severity=3))
        assert np.array_equal(corruption(image, "a#1"), direct), name
    for name in ("fog", "glass_blur", "impulse_noise"):  # the three that need NumPy / scikit-image APIs bridged
        corruption = Corruption(name, 2, package_version())
        assert np.array_equal(corruption(image, "a#1"), corruption(image, "a#1"))
        assert not np.array_equal(corruption(image, "a#1"), image)
    plan = DataPlan(options={"synth5/film": {"scale": 0.03}})
    sliced = plan.samples("synth5/film:impulse_noise@2", "test")
    first = decode_split(sliced, 32, cache_dir=tmp_path / "a").read(slice(None))
    second = decode_split(sliced, 32, cache_dir=tmp_path / "b").read(slice(None))
    clean = decode_split(plan.samples("synth5/film", "test"), 32, cache_dir=tmp_path / "a").read(slice(None))
    assert np.array_equal(first, second) and not np.array_equal(first, clean)
    assert sliced.fingerprint != plan.samples("synth5/film", "test").fingerprint


def frame(rows: list[tuple[str, str, int, str, float]]) -> pd.DataFrame:
    return pd.DataFrame([{"method": m, "backbone": "", "source": s, "seed": seed, "target": t, "metric": "acc",
                          "value": v, "env": "", "sweep": "", "collapsed": False} for m, s, seed, t, v in rows])


def planted_results() -> pd.DataFrame:
    """Two methods, two sources, three seeds; one of them trained on the groups' dataset (left out)."""
    rng = np.random.default_rng(7)
    rows = []
    for method in ("a", "b"):
        for source in ("synth5/film", "synth5/wild", "synth5/studio"):
            for seed in range(3):
                rows.append((method, source, seed, "synth5/studio", rng.uniform(0.4, 0.6)))
                for group in ("dark", "medium", "light"):
                    rows.append((method, source, seed, f"synth5/studio:skin={group}", rng.uniform(0.2, 0.8)))
                for corruption in ("fog", "contrast"):
                    for severity in (1, 2):
                        rows.append((method, source, seed, f"synth5/studio:{corruption}@{severity}",
                                     rng.uniform(0.1, 0.5)))
    return frame(rows)


def test_groups_worst_group_and_gap_are_the_direct_pandas_computation():
    results = planted_results()
    table = slices.groups_table(results, "acc", ["a", "b"])[0]
    assert table.columns == ["dark", "medium", "light", "worst", "gap"]
    groups = results[results["target"].str.contains("skin=") & results["source"].ne("synth5/studio")]
    for method, cells in table.rows:
        mine = groups[groups["method"] == method].assign(group=lambda f: f["target"].str.split("=").str[1])
        wide = mine.pivot_table(index=["source", "seed"], columns="group", values="value")
        per_seed_worst = wide.min(axis=1).groupby(level="seed").mean()
        per_seed_gap = (wide.max(axis=1) - wide.min(axis=1)).groupby(level="seed").mean()
        assert cells[3].mean == pytest.approx(per_seed_worst.mean(), abs=1e-12)
        assert cells[4].mean == pytest.approx(per_seed_gap.mean(), abs=1e-12)
        assert cells[4].std == pytest.approx(per_seed_gap.std(ddof=1), abs=1e-12) and cells[4].seeds == 3
        assert cells[0].mean == pytest.approx(wide["dark"].groupby(level="seed").mean().mean(), abs=1e-12)


def test_mce_is_imagenet_c_s_worked_example():
    """Errors of the method over the baseline's, summed over severities per corruption, then averaged:
    fog (0.2 + 0.4) / (0.4 + 0.6) = 0.6, contrast (0.5 + 0.5) / (0.5 + 0.5) = 1.0 -> mCE 0.8."""
    index = pd.MultiIndex.from_tuples([("s", 0, "fog", 1), ("s", 0, "fog", 2), ("s", 0, "contrast", 1),
                                       ("s", 0, "contrast", 2)], names=["source", "seed", "corruption", "severity"])
    method = pd.Series([0.8, 0.6, 0.5, 0.5], index=index)  # accuracies
    baseline = pd.Series([0.6, 0.4, 0.5, 0.5], index=index)
    assert slices.mce(method, baseline, ["fog", "contrast"]).iloc[0] == pytest.approx(0.8, abs=1e-12)
    results = planted_results()
    table, by_severity = slices.corruptions_tables(results, "acc", ["a", "b"], baseline="a")
    assert table.columns == ["fog", "contrast", "mean (mCA)", "mCE vs a"]
    assert table.rows[0][1][3].mean == pytest.approx(1.0, abs=1e-12)  # a baseline against itself
    assert by_severity.columns == ["severity 1", "severity 2"]
    with pytest.raises(BenchmarkError, match="--baseline c: no corruption evaluations"):
        slices.corruptions_tables(results, "acc", ["a"], baseline="c")


def test_the_three_tables_render_as_markdown_and_compile_as_latex(tmp_path):
    results = planted_results()
    results = pd.concat([results, frame([(m, s, seed, "synth5/studio:occluded", 0.3) for m in "ab"
                                         for s in ("synth5/film", "synth5/wild") for seed in range(3)])])
    built = (slices.build_tables("slices", results, "acc", ["a", "b"]) + slices.build_tables("groups", results, "acc", ["a", "b"])
             + slices.build_tables("corruptions", results, "acc", ["a", "b"], baseline="a"))
    rows = markdown_rows(tables.render(built[0], "md"))
    assert rows[0] == ["Method", "synth5/studio:occluded", "Δ synth5/studio:occluded"] and rows[2][0] == "a"
    assert all("±" in cell for cell in rows[2][1:])
    if shutil.which("pdflatex") is None:
        pytest.skip("pdflatex is not installed here")
    body = "\n".join(tables.render(t, "latex") for t in built)
    doc = tmp_path / "slices.tex"
    doc.write_text("\\documentclass{article}\\usepackage{booktabs}\\usepackage[utf8]{inputenc}"
                   "\\usepackage{graphicx}\\begin{document}\n" + body + "\n\\end{document}\n")
    proc = subprocess.run(["pdflatex", "-halt-on-error", "-interaction=nonstopmode", doc.name], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:]


def test_a_protocols_slices_are_checked_when_it_loads(tmp_path):
    from benchmark.jobs.protocol import ProtocolError, load_protocol

    path = tmp_path / "p.toml"
    path.write_text('name = "p"\nmethods = ["erm"]\ndatasets = ["synth5/studio", "synth5/wild"]\n'
                    'slices = ["synth5/wild:occluded", "synth5/wild:fogg@3"]\n')
    with pytest.raises(ProtocolError, match=r"slices: unknown slice 'synth5/wild:fogg@3'"):
        load_protocol(str(path))
    path.write_text(path.read_text().replace("synth5/wild:fogg@3", "synth5/film:fog@3"))
    with pytest.raises(ProtocolError, match=r"'synth5/film:fog@3' is cut from 'synth5/film', which is not one"):
        load_protocol(str(path))
