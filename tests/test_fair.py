"""The pretraining axis: `backbones` in a protocol (or --backbones) makes each backbone its own job,
tables tell two pretrainings of one network apart, `benchmark table --table fair` sets methods
against backbones, and `benchmark compare` takes method@backbone."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from benchmark.cli import main
from benchmark.core.errors import BenchmarkError
from benchmark.jobs.protocol import ProtocolError, load_protocol
from benchmark.models.specs import BackboneSpec
from benchmark.report import compare, tables
from benchmark.store import RESULT_COLUMNS
from benchmark.store.base import backbone_labels

from .test_tables import markdown_rows

SOURCES = ["synth5/studio", "synth5/film"]


def planted(values: dict[tuple[str, str], float], seeds=(0, 1, 2), noise=0.004) -> pd.DataFrame:
    """A results frame: per (method, backbone), every job's accuracy is the planted value on unseen
    targets and 30 points more in-domain, plus a little seeded noise."""
    rng = np.random.default_rng(0)
    rows = []
    for (method, backbone), value in values.items():
        for source in SOURCES:
            for seed in seeds:
                for target in SOURCES:
                    v = value + (0.3 if target == source else 0) + rng.normal(0, noise)
                    rows.append([method, backbone, source, seed, target, "acc", v, "env", "", False])
    return pd.DataFrame(rows, columns=RESULT_COLUMNS)


def test_fair_table_bolds_each_backbones_best_method():
    frame = planted({("erm", "mobilenet_v2:imagenet"): 0.40, ("cafe", "mobilenet_v2:imagenet"): 0.50,
                     ("erm", "mobilenet_v2:none"): 0.30, ("cafe", "mobilenet_v2:none"): 0.20})
    (table,) = tables.build_tables("fair", frame, "acc", SOURCES, SOURCES, ["erm", "cafe"])
    assert table.columns == ["mobilenet_v2:imagenet unseen", "mobilenet_v2:imagenet in-domain",
                             "mobilenet_v2:none unseen", "mobilenet_v2:none in-domain"]
    rows = dict(table.rows)
    assert rows["cafe"][0].mean == pytest.approx(0.50, abs=0.01) and rows["cafe"][1].mean == pytest.approx(0.80, abs=0.01)
    assert rows["erm"][2].mean == pytest.approx(0.30, abs=0.01) and rows["erm"][2].seeds == 3
    md = markdown_rows(tables.render(table, "md"))
    assert md[0] == ["Method", *table.columns] and len(md) == 4
    body = {r[0]: r[1:] for r in md[2:]}
    assert body["cafe"][0].startswith("**") and not body["erm"][0].startswith("**")  # imagenet: cafe best
    assert body["erm"][2].startswith("**") and not body["cafe"][2].startswith("**")  # none: erm best
    assert all("±" in cell for row in body.values() for cell in row)  # three seeds: intervals


def test_a_missing_source_marks_the_cell_partial():
    frame = planted({("erm", "resnet18"): 0.4})
    frame = frame[~((frame["source"] == "synth5/film") & (frame["seed"] == 2))]
    (table,) = tables.build_tables("fair", frame, "acc", SOURCES, SOURCES, ["erm"])
    (cells,) = [c for _, c in table.rows]
    assert cells[0].partial and "*" in cells[0].text(True) and any("mean over the sources" in n for n in table.notes)


def test_backbone_labels_show_weights_only_where_one_network_has_two():
    ids = pd.Series(["resnet18:msceleb", "mobilenet_v2:imagenet", "mobilenet_v2:none", "timm:convnext_atto:none", ""])
    assert backbone_labels(ids).tolist() == ["resnet18", "mobilenet_v2:imagenet", "mobilenet_v2:none",
                                             "timm:convnext_atto", ""]


def test_compare_takes_method_at_backbone_and_asks_for_one_when_several_ran():
    frame = planted({("erm", "mobilenet_v2:imagenet"): 0.40, ("erm", "mobilenet_v2:none"): 0.30})
    result = compare.compare(frame, "erm@mobilenet_v2:imagenet", "erm@mobilenet_v2:none", "acc", SOURCES)
    unseen = next(g for g in result.groups if g.group == "unseen")
    assert unseen.mean_diff == pytest.approx(0.10, abs=0.01) and unseen.units == 6
    with pytest.raises(BenchmarkError, match=r"erm ran on 2 backbones .*erm@BACKBONE"):
        compare.compare(frame, "erm", "erm@mobilenet_v2:none", "acc", SOURCES)
    short = frame.assign(backbone="mobilenet_v2")  # one pretraining: tables name the network alone
    short.loc[short["seed"] == 0, "value"] += 0.01
    assert compare.paired_cells(short, "erm@mobilenet_v2:imagenet", "erm@mobilenet_v2", "acc")[0]["diff"].abs().max() == 0


def test_protocol_backbones_are_parsed_and_checked(tmp_path):
    path = tmp_path / "p.toml"
    path.write_text('name = "p"\ndatasets = ["synth5/studio"]\nbackbones = ["mobilenet_v2:imagenet", '
                    '{name = "resnet18", weights = "msceleb", path = "w.pth"}, "timm:convnext_atto:none"]\n')
    protocol = load_protocol(str(path))
    assert protocol.backbone_specs() == [BackboneSpec("mobilenet_v2", "imagenet"), BackboneSpec("resnet18", "msceleb", "w.pth"),
                                         BackboneSpec("timm:convnext_atto", "none")]
    path.write_text('name = "p"\ndatasets = ["synth5/studio"]\nbackbones = ["resnet18"]\n')
    with pytest.raises(ProtocolError, match=r"backbones\[0\]: backbone 'resnet18': expected NAME:WEIGHTS"):
        load_protocol(str(path))
    path.write_text('name = "p"\ndatasets = ["synth5/studio"]\nbackbones = ["resnet18:none", "resnet18:none"]\n')
    with pytest.raises(ProtocolError, match="resnet18:none listed twice"):
        load_protocol(str(path))
    assert load_protocol("synth5").backbone_specs() == [BackboneSpec("mobilenet_v2", "imagenet")]


def test_each_backbone_is_a_job_of_its_own_and_the_first_keeps_its_hash(capsys):
    from benchmark.jobs.plan import expand, plan_from

    base = load_protocol("synth5", {"seeds": "[0]", "sources": '["synth5/studio"]'})
    both = load_protocol("synth5", {"seeds": "[0]", "sources": '["synth5/studio"]',
                                    "backbones": '["mobilenet_v2:imagenet", "timm:resnet10t:none"]'})
    plan = plan_from(base, None, {})
    one, two = expand(base, ["erm"], plan), expand(both, ["erm"], plan)
    assert len(one) == 1 and len(two) == 2
    assert two[0].hash == one[0].hash and two[0].backbone.id == "mobilenet_v2:imagenet"
    assert two[1].backbone.id == "timm:resnet10t:none" and two[1].identity["backbone"]["digest"] == "none"
    with pytest.raises(BenchmarkError, match="close: resnet10t"):
        expand(load_protocol("synth5", {"backbones": '["timm:resnet10:none"]'}), ["erm"], plan)


@pytest.mark.slow
def test_a_two_backbone_grid_ends_in_a_fair_table_with_both_filled(tmp_path, capsys):
    from .test_runner import write_protocol

    protocol = write_protocol(tmp_path)
    uri = f"jsonl:{tmp_path}/runs"
    args = ["run", "--protocol", str(protocol), "--tracking-uri", uri, "--methods", "erm,cafe",
            "--backbones", "mobilenet_v2:imagenet,mobilenet_v2:none"]
    assert main([*args, "--dry-run"]) == 0
    assert "8 jobs, 0 already FINISHED" in capsys.readouterr().out
    assert main(args) == 0
    capsys.readouterr()
    assert main(["table", "--protocol", "tiny", "--tracking-uri", uri, "--table", "fair",
                 "--out", str(tmp_path / "fair.md")]) == 0
    md = markdown_rows((tmp_path / "fair.md").read_text())
    assert md[0] == ["Method", "mobilenet_v2:imagenet unseen", "mobilenet_v2:imagenet in-domain",
                     "mobilenet_v2:none unseen", "mobilenet_v2:none in-domain"]
    body = {r[0]: r[1:] for r in md[2:]}
    assert set(body) == {"erm", "cafe"}
    assert all(cell.replace("*", "").strip("!†").replace(".", "", 1).isdigit() for row in body.values() for cell in row), body
    assert main(["compare", "cafe@mobilenet_v2:imagenet", "cafe@mobilenet_v2:none", "--protocol", "tiny",
                 "--tracking-uri", uri]) == 0
    assert "cafe@mobilenet_v2:imagenet vs cafe@mobilenet_v2:none" in capsys.readouterr().out
