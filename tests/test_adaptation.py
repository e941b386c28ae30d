"""The CLIP adaptations together: a synth5 grid of every one of them on a tiny random open_clip
model ends in `benchmark table --table adaptation`; with an encoder that has no text tower the
grid skips them before any work and says so."""

from __future__ import annotations

import pytest

from benchmark.cli import main

from . import clip_tiny
from .test_runner import write_protocol
from .test_tables import markdown_rows

ADAPTATIONS = ["clip_zeroshot", "clip_probe", "clip_ft", "clip_adapter", "tip_adapter", "tip_adapter_f", "coop",
               "lp_ft", "wise_ft", "cafe", "cafe_classmask"]
SMALL = ["--set", "hparams.cafe.drop_per_group=1", "--set", "hparams.cafe_classmask.drop_per_group=1",
         "--set", "hparams.wise_ft.warmup_steps=1", "--set", "hparams.tip_adapter_f.train_epoch=2",
         "--set", "hparams.tip_adapter.augment_epoch=2", "--set", "hparams.tip_adapter_f.augment_epoch=2",
         "--set", "hparams.lp_ft.num_reg_values=3", "--set", "hparams.coop.n_ctx=4"]


@pytest.mark.slow
def test_a_grid_of_every_adaptation_ends_in_the_adaptation_table(tmp_path, capsys):
    clip_tiny.register()
    protocol = write_protocol(tmp_path)
    uri = f"jsonl:{tmp_path}/runs"
    assert main(["run", "--protocol", str(protocol), "--tracking-uri", uri, "--methods", ",".join(ADAPTATIONS),
                 "--set", f"encoder={clip_tiny.ENCODER_ID}", "--sources", "synth5/studio", *SMALL]) == 0
    out = capsys.readouterr().out
    assert "[n/a]" not in out and "FAILED" not in out, out[-3000:]
    path = tmp_path / "adaptation.md"
    assert main(["table", "--protocol", "tiny", "--tracking-uri", uri, "--table", "adaptation",
                 "--out", str(path), "--compare", "paper"]) == 0
    md = markdown_rows(path.read_text())
    assert md[0][:3] == ["Method", "synth5/studio (in-domain)", "Mean unseen"]
    body = {r[0]: r[1:] for r in md[2:]}
    assert list(body) == ["Zero-shot CLIP", "Linear probe", "CLIP+FT", "CLIP-Adapter", "Tip-Adapter", "Tip-Adapter-F",
                          "CoOp", "LP-FT", "WiSE-FT (α = 0.5)", "CAFE", "CAFE class-wise"]
    assert all(c.strip("*!†").replace(".", "", 1).isdigit() for row in body.values() for c in row[:3]), body


def test_without_a_text_tower_the_grid_skips_them_and_says_so(tmp_path, capsys):
    protocol = write_protocol(tmp_path)
    uri = f"jsonl:{tmp_path}/runs"
    assert main(["run", "--protocol", str(protocol), "--tracking-uri", uri, "--methods", "coop,wise_ft,erm",
                 "--sources", "synth5/studio", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert out.count("[n/a]") == 2 and "coop is not applicable with encoder torchvision:mobilenet_v2:imagenet" in out
    assert "1 jobs, 0 already FINISHED" in out
