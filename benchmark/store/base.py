"""The result store: the one owner of the run record.

`ResultStore` is what the rest of the harness talks to, one class made of four concerns, each
in its own file: the primitives a backend implements (records.py: experiments, runs written with
a `RunWriter` and read as `RunRecord`s, artifacts), trained models (model_registry.py), one
training per job however many processes ask (claims.py: job states by hash, the claim, abandoned
runs), and the tidy results frame tables are built from (results_frame.py).
"""

from __future__ import annotations

from .claims import ABANDONED, CLAIM_SETTLE_S, Claims, JobState
from .model_registry import ModelRegistry
from .records import DatasetRef, ModelRecord, Records, RunRecord, RunWriter
from .results_frame import HISTORY_COLUMNS, RESULT_COLUMNS, ResultsFrame, backbone_labels, method_label


class ResultStore(Records, ModelRegistry, Claims, ResultsFrame):
    """A place runs are written to and read from; picklable, so workers on other processes and
    hosts get it with their job and write straight to the same place."""


__all__ = ["ABANDONED", "CLAIM_SETTLE_S", "DatasetRef", "HISTORY_COLUMNS", "JobState", "ModelRecord", "RESULT_COLUMNS",
           "ResultStore", "RunRecord", "RunWriter", "backbone_labels", "method_label"]
