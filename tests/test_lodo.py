"""Multi-source jobs and leave-one-domain-out: protocol folds, job identity, the union split with
each sample's domain, the per-domain balanced sampler, and a synth5 LODO grid end to end."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from benchmark.cli import main
from benchmark.data import DATASETS, decode_split
from benchmark.data.union import union_split
from benchmark.jobs.plan import DataPlan, expand, plan_from
from benchmark.jobs.protocol import ProtocolError, load_protocol
from benchmark.training.recipe import Recipe
from benchmark.core.sources import held_out, leave_one_out, seen
from benchmark.store import open_store
from benchmark.training.trainer import epoch_sampler

DOMAINS = ["synth5/studio", "synth5/webcam", "synth5/film"]
PROTOCOL = """
name = "lodo3"
version = 1
methods = ["erm"]
datasets = ["synth5/studio", "synth5/webcam", "synth5/film"]
leave_one_out = true
seeds = [0]
encoder = "torchvision:mobilenet_v2:imagenet"

[backbone]
name = "mobilenet_v2"
weights = "none"

[recipe]
epochs = 1
batch_size = 16
input_size = 32
progress = false

[dataset_options."synth5/studio"]
scale = 0.03
[dataset_options."synth5/webcam"]
scale = 0.03
[dataset_options."synth5/film"]
scale = 0.05
"""


def write(tmp_path, text=PROTOCOL):
    path = tmp_path / "lodo3.toml"
    path.write_text(text)
    return path


def test_folds_are_each_datasets_complement_and_bad_sources_are_named(tmp_path):
    protocol = load_protocol(str(write(tmp_path)))
    assert protocol.sources == ["synth5/webcam+synth5/film", "synth5/studio+synth5/film", "synth5/studio+synth5/webcam"]
    assert leave_one_out(DOMAINS) == protocol.sources
    assert held_out("synth5/studio+synth5/film", DOMAINS) == ["synth5/webcam"]
    assert seen("synth5/studio+synth5/film", "synth5/film") and not seen("synth5/studio+synth5/film", "synth5/webcam")
    one = load_protocol(str(write(tmp_path)), {"sources": '["synth5/studio+synth5/film"]'})
    assert one.sources == ["synth5/studio+synth5/film"]  # a fold picked with --sources
    with pytest.raises(ProtocolError, match="source 'synth5/studio' is not one of its folds"):
        load_protocol(str(write(tmp_path)), {"sources": '["synth5/studio"]'})
    plain = PROTOCOL.replace("leave_one_out = true", 'sources = ["synth5/studio+synth5/wild"]')
    with pytest.raises(ProtocolError, match=r"source 'synth5/studio\+synth5/wild'.*\(synth5/wild\)"):
        load_protocol(str(write(tmp_path, plain)))


def test_a_fold_is_one_job_whose_hash_names_every_dataset_it_trains_on(tmp_path):
    protocol = load_protocol(str(write(tmp_path)))
    plan = plan_from(protocol, None, {})
    jobs = expand(protocol, ["erm"], plan)
    assert [j.source for j in jobs] == protocol.sources and len({j.hash for j in jobs}) == 3
    job = jobs[0]  # trained on webcam and film
    assert job.identity["source"] == "synth5/webcam+synth5/film" and job.targets == DOMAINS
    assert {k for k in job.fingerprints if k.endswith(":train")} == {"synth5/webcam:train", "synth5/film:train"}
    assert [j.hash for j in expand(protocol, ["erm"], plan_from(protocol, None, {}))] == [j.hash for j in jobs]
    assert job.fingerprints["synth5/film:train"] == plan.samples("synth5/film", "train").fingerprint
    # a changed part changes the jobs (film is also every job's target, so all three)
    other = load_protocol(str(write(tmp_path)), {"dataset_options.synth5/film.scale": "0.04"})
    changed = expand(other, ["erm"], plan_from(other, None, {}))
    assert not {j.hash for j in changed} & {j.hash for j in jobs}
    assert changed[0].fingerprints["synth5/film:train"] != job.fingerprints["synth5/film:train"]


def test_the_union_split_keeps_each_samples_domain_and_images(tmp_path):
    plan = DataPlan(None, {}, {d: {"scale": 0.03} for d in DOMAINS})
    parts = [decode_split(plan.samples(d, "train"), 32) for d in DOMAINS[:2]]
    union = union_split(parts)
    assert len(union) == sum(map(len, parts)) and union.domain_names == tuple(DOMAINS[:2])
    assert union.dataset == "synth5/studio+synth5/webcam"
    assert (union.domains == np.repeat([0, 1], [len(p) for p in parts])).all()
    assert (union.labels == np.concatenate([p.labels for p in parts])).all()
    k = len(parts[0])
    assert np.array_equal(union.read(np.array([0, k])), np.stack([parts[0].read(np.array([0]))[0],
                                                                  parts[1].read(np.array([0]))[0]]))
    again = union_split(parts)
    assert again.path == union.path and again.fingerprint == union.fingerprint  # written once
    assert union_split(parts[:1]) is parts[0]


def test_domain_balanced_sampler_gives_every_domain_class_cell_an_equal_share():
    labels = np.array([0] * 90 + [1] * 10 + [0] * 5 + [1] * 45)
    domains = np.array([0] * 100 + [1] * 50)
    gen = torch.Generator().manual_seed(0)
    order = np.fromiter(epoch_sampler(labels, Recipe(sampler="domain_balanced", samples_per_epoch=40000), gen, domains),
                        dtype=np.int64)
    cells = np.bincount(domains[order] * 2 + labels[order], minlength=4) / len(order)
    assert np.allclose(cells, 0.25, atol=0.01)
    plain = np.fromiter(epoch_sampler(labels, Recipe(sampler="balanced", samples_per_epoch=40000), gen, domains),
                        dtype=np.int64)
    plain_cells = np.bincount(domains[plain] * 2 + labels[plain], minlength=4) / len(plain)
    assert plain_cells[2] < 0.05  # class-balanced only: domain 1's rare class stays rare


@pytest.mark.slow
def test_a_synth5_lodo_grid_finishes_and_its_table_renders(tmp_path, capsys):
    uri = f"jsonl:{tmp_path}/runs"
    assert main(["run", "--protocol", str(write(tmp_path)), "--tracking-uri", uri]) == 0
    out = capsys.readouterr().out
    assert "[3/3 done" in out and "--out results/lodo3/lodo.md" in out
    store = open_store(uri)
    runs = store.runs(store.experiment("lodo3"), jobs_only=True)
    assert len(runs) == 3 and {r.status for r in runs} == {"FINISHED"}
    run = next(r for r in runs if r.tags["source"] == "synth5/webcam+synth5/film")
    assert {name for name, context in run.inputs if context == "train"} == {"synth5/webcam:train", "synth5/film:train"}
    assert run.metrics["test/mean_unseen_acc"] == run.metrics["test/synth5.studio/acc"]  # the held-out one
    assert main(["table", "--protocol", "lodo3", "--tracking-uri", uri, "--out", str(tmp_path / "t" / "lodo.md")]) == 0
    lines = (tmp_path / "t" / "lodo.md").read_text().splitlines()
    header = next(line for line in lines if line.startswith("| Method"))
    assert [c.strip() for c in header.strip("|").split("|")] == ["Method", *DOMAINS, "Mean"]
    row = next(line for line in lines if line.startswith("| erm"))
    cells = [c.strip().rstrip("!") for c in row.strip("|").split("|")][1:]  # "!": a collapsed model (tiny run)
    assert float(cells[0]) == pytest.approx(100 * run.metrics["test/synth5.studio/acc"], abs=0.005)
    assert float(cells[-1]) == pytest.approx(np.mean([float(c) for c in cells[:-1]]), abs=0.01)
    assert (tmp_path / "t" / "heatmap_erm.png").is_file()
