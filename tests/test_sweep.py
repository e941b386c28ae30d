"""Hyperparameter sweeps: expansion (grid and seeded random), hashes and tags, and the sweep table
and figure drawn from a tiny synth5 sweep."""

from __future__ import annotations

import pytest

from benchmark.cli import main
from benchmark.core.errors import BenchmarkError
from benchmark.jobs.plan import expand, plan_from
from benchmark.jobs.protocol import ProtocolError, load_protocol
from benchmark.store import open_store
from benchmark.jobs.sweep import Sweep

from .test_runner import write_protocol


@pytest.mark.slow
def test_a_grid_is_every_combination_and_each_point_its_own_job():
    sweep = Sweep.parse({"hparams.cafe.sep_weight": [0.5, 1.5], "hparams.cafe.div_weight": [5, 15]}, "p")
    assert sweep.points() == [{"hparams.cafe.div_weight": 5, "hparams.cafe.sep_weight": 0.5},
                              {"hparams.cafe.div_weight": 5, "hparams.cafe.sep_weight": 1.5},
                              {"hparams.cafe.div_weight": 15, "hparams.cafe.sep_weight": 0.5},
                              {"hparams.cafe.div_weight": 15, "hparams.cafe.sep_weight": 1.5}]
    protocol = load_protocol("synth5_sweep", {"seeds": "[0]"})
    jobs = expand(protocol, ["cafe", "erm"], plan_from(protocol, None, None))
    cafe = [j for j in jobs if j.method == "cafe"]
    assert len(cafe) == 3 and len({j.hash for j in cafe}) == 3
    assert sorted(j.hparams["sep_weight"] for j in cafe) == [0.5, 1.5, 5.0]
    assert [j.sweep for j in cafe][0] == {"hparams.cafe.sep_weight": 0.5}
    erm = [j for j in jobs if j.method == "erm"]  # the swept key does not touch erm: one job, untagged
    assert len(erm) == 1 and erm[0].sweep == {}


def test_a_random_search_is_seeded_and_inside_its_ranges():
    table = {"random": 5, "seed": 3, "ranges": {"hparams.cafe.sep_weight": {"log_uniform": [0.15, 15]},
                                                "hparams.cafe.div_norm": {"choice": ["code", "paper"]}}}
    first, again = Sweep.parse(table, "p").points(), Sweep.parse(table, "p").points()
    other = Sweep.parse({**table, "seed": 4}, "p").points()
    assert first == again and first != other and len(first) == 5
    assert all(0.15 <= p["hparams.cafe.sep_weight"] <= 15 and p["hparams.cafe.div_norm"] in ("code", "paper")
               for p in first)


def test_listed_points_are_taken_as_written_and_the_recipes_protocol_expands_them():
    sweep = Sweep.parse({"points": [{}, {"recipe.swad": True, "recipe.swad_eval_steps": 3}, {"recipe.sam_rho": 0.05}]},
                        "p")
    assert sweep.points() == [{}, {"recipe.swad": True, "recipe.swad_eval_steps": 3}, {"recipe.sam_rho": 0.05}]
    assert sweep.keys == ["recipe.sam_rho", "recipe.swad", "recipe.swad_eval_steps"]
    with pytest.raises(BenchmarkError, match="cannot join"):
        sweep.with_grid("recipe.epochs", [1, 2])
    protocol = load_protocol("synth5_recipes", {"seeds": "[0]", "sources": '["synth5/studio"]'})
    jobs = expand(protocol, ["erm", "cafe"], plan_from(protocol, None, None))
    assert len(jobs) == 8 and len({j.hash for j in jobs}) == 8
    assert sorted(j.recipe.dg_label() for j in jobs if j.method == "erm") == ["", "mixstyle", "sam", "swad"]
    plain = load_protocol("synth5", {"seeds": "[0]", "sources": '["synth5/studio"]'})
    (erm,) = expand(plain, ["erm"], plan_from(plain, None, None))
    assert erm.identity["recipe"] == next(j for j in jobs if j.method == "erm" and not j.sweep).identity["recipe"]


@pytest.mark.parametrize("table, message", [
    ({"points": [{}], "hparams.cafe.lr": [1]}, "one of them"),
    ({"points": [{"epochs": 2}]}, "a swept key is hparams.<method>.<name>"),
    ({"points": {"recipe.swad": True}}, "expected a list of tables"),
    ({"hparams.cafe": [1]}, "a swept key is hparams.<method>.<name>"),
    ({"hparams.cafe.sep_weight": []}, "non-empty list"),
    ({"random": 3}, "needs \\[sweep.ranges\\]"),
    ({"random": 2, "ranges": {"recipe.epochs": {"normal": [1, 2]}}}, "expected one of"),
    ({"random": 2, "ranges": {"hparams.cafe.lr": {"log_uniform": [0, 1]}}}, "0 < low < high"),
])
def test_a_bad_sweep_is_named(table, message):
    with pytest.raises(BenchmarkError, match=message):
        Sweep.parse(table, "p")


def test_a_swept_value_out_of_range_stops_the_protocol_at_load():
    with pytest.raises(ProtocolError, match="sweep point .*lr = -1.0: must be > 0"):
        load_protocol("synth5", {"sweep": '{"hparams.cafe.lr" = [0.1, -1.0]}'})


@pytest.mark.slow
def test_a_tiny_sweep_runs_tags_its_jobs_and_draws_the_sweep_figure(tmp_path, capsys):
    protocol = write_protocol(tmp_path)
    uri = f"jsonl:{tmp_path / 'runs'}"
    assert main(["run", "--protocol", str(protocol), "--tracking-uri", uri, "--methods", "erm", "--sources",
                 "synth5/film", "--sweep", "hparams.erm.lr=0.001,0.01", "--seeds", "0,1"]) == 0
    store = open_store(uri)
    runs = store.runs(store.experiment("tiny"), jobs_only=True)
    assert sorted(r.tags["sweep.hparams.erm.lr"] for r in runs) == ["0.001", "0.001", "0.01", "0.01"]
    capsys.readouterr()
    out = tmp_path / "fig" / "sweep.md"
    assert main(["table", "--protocol", "tiny", "--tracking-uri", uri, "--table", "sweep", "--out", str(out)]) == 0
    text = out.read_text()
    assert "| erm " in text and "lr=0.001" in text and "lr=0.01" in text and "last epoch" in text
    assert "the source validation split" in text and "the unseen targets (oracle)" in text
    assert (tmp_path / "fig" / "sweep_erm_synth5.film.png").stat().st_size > 10000
    assert (tmp_path / "fig" / "sweep_erm_synth5.film.pdf").read_bytes().startswith(b"%PDF")
    assert main(["table", "--protocol", "tiny", "--tracking-uri", uri]) == 0  # Table 1 keeps the points apart
    table = capsys.readouterr().out
    assert "| erm [lr=0.001]" in table and "| erm [lr=0.01]" in table
