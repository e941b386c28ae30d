"""Epoch checkpoints (benchmark.training.resume): a job stopped after an epoch and trained on by
a second try ends bit for bit where an uninterrupted run ends, on this machine and thread count.

The unit is the job: its trained weights, its per-epoch losses and its predictions. A stop is
simulated where Slurm's warning lands (submitit exits with SystemExit): inside the second
epoch's logging, after its training and before its checkpoint.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from benchmark.data import DATASETS, decode_split
from benchmark.models.backbones import BackboneSpec
from benchmark.training.method import Components, MemoryLog
from benchmark.training.plugins import build_method
from benchmark.training.recipe import Recipe
from benchmark.training.resume import ResumePoint

from .test_cafe import linear_encoder

SIZE, BATCH, EPOCHS = 32, 16, 3


class StopDuring(MemoryLog):
    """A log that stops the process (as submitit does on Slurm's warning) when epoch `epoch` logs."""

    def __init__(self, epoch: int):
        super().__init__()
        self.epoch = epoch

    def metrics(self, values, step=None):
        if step == self.epoch and "lr" in values:
            raise SystemExit(-1)
        super().metrics(values, step)


@pytest.fixture(scope="module")
def data():
    reader = DATASETS.get("synth5/studio")
    return decode_split(reader.load(None, "train", scale=0.15), SIZE), decode_split(reader.load(None, "test", scale=0.15), SIZE)


def recipe(seed: int = 5) -> Recipe:
    return Recipe(epochs=EPOCHS, batch_size=BATCH, input_size=SIZE, seed=seed, samples_per_epoch=BATCH * 3, progress=False)


# scn relabels from epoch 1 (labels are state), cafe draws drop masks (its own generator), eac
# erases and flips per sample, erm is the plain loop.
@pytest.mark.parametrize("name, hparams", [("cafe", {}),
                                           pytest.param("scn", {"relabel_epoch": 1, "margin_2": 0.0}, marks=pytest.mark.slow),
                                           pytest.param("eac", {}, marks=pytest.mark.slow),
                                           pytest.param("erm", {}, marks=pytest.mark.slow)])
def test_a_stopped_job_resumed_from_its_epoch_ends_where_an_uninterrupted_one_does(name, hparams, data, tmp_path):
    train, test = data
    components = Components(BackboneSpec("resnet18", "none"), linear_encoder())
    plain = build_method(name, hparams, components)
    plain_log = MemoryLog()
    plain.fit(train, recipe=recipe(), device=torch.device("cpu"), log=plain_log)

    stopped = build_method(name, hparams, components)
    first = ResumePoint.open(tmp_path, "job", "run-1")
    with pytest.raises(SystemExit):
        stopped.fit(train, recipe=recipe(), device=torch.device("cpu"), log=StopDuring(2), resume=first)
    again = ResumePoint.open(tmp_path, "job", "run-2")
    assert again.epoch == 1 and again.previous_run_id == "run-1"
    resumed = build_method(name, hparams, components)
    resumed_log = MemoryLog()
    resumed.fit(train, recipe=recipe(), device=torch.device("cpu"), log=resumed_log, resume=again)

    assert resumed_log.series("train/loss") == plain_log.series("train/loss")[1:]  # epochs 2 and 3, equal
    for key, value in plain.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key
    np.testing.assert_array_equal(plain.predict(test), resumed.predict(test))
    if name == "scn":
        assert sum(resumed_log.series("train/relabelled")) > 0  # the relabelling ran on both sides of the stop


class StopInEpoch(BaseException):  # a kill: nothing inside the loop may catch it
    """The stop, raised where the checkpoint after batch `batch` of epoch `epoch` would be written."""


@pytest.mark.parametrize("name, hparams", [("cafe", {}),
                                           pytest.param("scn", {"relabel_epoch": 1, "margin_2": 0.0}, marks=pytest.mark.slow)])
def test_a_job_stopped_inside_an_epoch_goes_on_from_the_next_batch_and_ends_as_an_uninterrupted_one(
        name, hparams, data, tmp_path):
    """Written between batches (`mid_epoch_s` = 0: after every batch but an epoch's last): the try
    stops during epoch 2's second batch, after its training, so the file holds epoch 1 and one
    batch of epoch 2; the next try trains batch 2 again from there."""
    train, test = data
    components = Components(BackboneSpec("resnet18", "none"), linear_encoder())
    plain = build_method(name, hparams, components)
    plain_log = MemoryLog()
    plain.fit(train, recipe=recipe(), device=torch.device("cpu"), log=plain_log)

    first = ResumePoint.open(tmp_path, "job", "run-1", every_s=0, mid_epoch_s=0)
    written = []
    save = first.save

    def save_or_stop(state):
        where = (state["epoch"], state["in_epoch"]["batches"] if "in_epoch" in state else None)
        if where == (1, 2):
            raise StopInEpoch
        written.append(where)
        save(state)

    first.save = save_or_stop
    with pytest.raises(StopInEpoch):
        build_method(name, hparams, components).fit(train, recipe=recipe(), device=torch.device("cpu"),
                                                    log=MemoryLog(), resume=first)
    assert written == [(0, 1), (0, 2), (1, None), (1, 1)]  # never after an epoch's last batch
    again = ResumePoint.open(tmp_path, "job", "run-2", every_s=0, mid_epoch_s=0)
    assert again.resumes_at() == "epoch 2 at batch 2 of 3" and again.saved_through() == "epoch 1 + 1 of 3 batches of epoch 2"
    resumed = build_method(name, hparams, components)
    resumed_log = MemoryLog()
    resumed.fit(train, recipe=recipe(), device=torch.device("cpu"), log=resumed_log, resume=again)

    # Epoch 2's mean loss sums batch 1 (first try) and batches 2-3 (this one): equal all the same.
    assert resumed_log.series("train/loss") == plain_log.series("train/loss")[1:]
    if name == "scn":
        assert resumed_log.series("train/relabelled") == plain_log.series("train/relabelled")[1:]
    for key, value in plain.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key
    np.testing.assert_array_equal(plain.predict(test), resumed.predict(test))


def test_inside_an_epoch_a_write_is_due_only_once_its_interval_passed(tmp_path):
    """(Off, None, is covered by the test below: its epoch-end writes are all there are.)"""
    assert ResumePoint(tmp_path / "a.pt", "a", "r", mid_epoch_s=0).due_in_epoch()
    assert not ResumePoint(tmp_path / "a.pt", "a", "r", mid_epoch_s=3600).due_in_epoch()
    assert not ResumePoint(tmp_path / "a.pt", "a", "r").due_in_epoch()
    late = ResumePoint(tmp_path / "a.pt", "a", "r", mid_epoch_s=0.2)
    time.sleep(0.25)
    assert late.due_in_epoch()
    late.save({"epoch": 0})  # a write starts the interval again
    assert not late.due_in_epoch()


def test_the_last_epoch_saves_nothing_and_a_checkpoint_is_written_whole(data, tmp_path):
    train, _ = data
    method = build_method("erm", {}, Components(BackboneSpec("resnet18", "none")))
    resume = ResumePoint.open(tmp_path, "job", "run-1")
    saved = []
    save = resume.save
    resume.save = lambda state: (saved.append(state["epoch"]), save(state))
    method.fit(train, recipe=recipe(), device=torch.device("cpu"), log=MemoryLog(), resume=resume)
    assert saved == [1, 2]  # after the last epoch nothing is left to resume
    assert [p.name for p in tmp_path.iterdir()] == ["job.pt"]  # no partial file left beside it


@pytest.mark.parametrize("case", ["corrupt", "truncated", "foreign", "old layout", "not a dict"])
def test_a_checkpoint_that_cannot_be_resumed_is_set_aside_and_named(case, tmp_path):
    path = tmp_path / "job.pt"
    if case == "corrupt":
        path.write_bytes(b"not a checkpoint")
    elif case == "truncated":  # a copy cut short (a full disk, a partial rsync)
        ResumePoint(path, "job", "run-1").save({"epoch": 1, "weights": torch.ones(1000)})
        path.write_bytes(path.read_bytes()[:-900])
    elif case == "foreign":
        ResumePoint(tmp_path / "other.pt", "other", "run-1").save({"epoch": 1})
        (tmp_path / "other.pt").rename(path)
    elif case == "old layout":
        torch.save({"epoch": 1, "job_hash": "job", "run_id": "run-1"}, path)
    else:
        torch.save([1, 2], path)
    content = path.read_bytes()
    opened = ResumePoint.open(tmp_path, "job", "run-2")
    assert opened.state is None and opened.epoch == 0  # trained from its first epoch
    why = {"corrupt": "unreadable", "truncated": "unreadable", "foreign": "saved by job other, not job",
           "old layout": "state layout unversioned, this version reads 2", "not a dict": "not a training checkpoint"}
    assert opened.warning.startswith(f"{path}: {why[case]}") and "set aside as job.pt.set-aside-" in opened.warning
    (aside,) = tmp_path.glob("job.pt.set-aside-*")
    assert aside.read_bytes() == content and not path.exists()  # kept, not deleted
    opened.save({"epoch": 1})  # the new try writes its own beside it
    assert ResumePoint.open(tmp_path, "job", "run-3").epoch == 1
