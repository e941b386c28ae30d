"""The names the harness writes into a run record, defined once.

Layout: one experiment per protocol; one parent run per `benchmark run` (tag kind = "grid");
one child run per job, tagged with its hash, method, source, seed and protocol. A job run's
status is the truth about the job: RUNNING, FINISHED, or FAILED / KILLED with the reason in the
`error` tag. Test metrics are `test/<target>/<metric>`, the target's name with "/" made ".".
"""

from __future__ import annotations

# Tags of every run.
KIND = "kind"  # "grid" on parent runs; absent on job runs
PROTOCOL = "protocol"
PARENT = "mlflow.parentRunId"  # MLflow's own name, so its UI nests job runs under their grid
ERROR = "error"
# On a job run whose model predicts (almost) one class on its source's test set: why
# (benchmark.training.metrics.collapse). Absent otherwise.
COLLAPSED = "collapsed"
# On a job run that went on from an earlier, stopped try's epoch checkpoint (benchmark.training.resume):
# "epoch N of run <id>"; its history up to epoch N is copied from that run. Absent otherwise.
RESUMED_FROM = "resumed_from"
# Param: how many jobs trained together as one fused model (benchmark.training.fused); 1 unfused.
# Part of the environment signature (benchmark.core.environment.SIGNATURE_KEYS names it too).
FUSED = "execution.fused"
COMMAND = "command"
# A test-time adaptation evaluation (`benchmark adapt`): kind = "tta", its own hash (trained job,
# TTA method and options, stream, target), the TTA method's label, the target, and the job run
# whose trained model it adapted (its LoggedModel id when it has one). Not a job run: no job_hash.
TTA_KIND = "tta"
TTA_HASH = "tta_hash"
TTA = "tta"
TTA_TARGET = "tta_target"
SOURCE_RUN = "source_run"
SOURCE_MODEL = "source_model"
# MLflow's own tags, which its UI shows: who ran it, from which commit, and a description.
USER, GIT_COMMIT, DESCRIPTION = "mlflow.user", "mlflow.source.git.commit", "mlflow.note.content"
# The experiment tag MLflow 3's UI reads to choose an experiment's landing page: this value opens
# the training runs view (not the GenAI traces overview).
EXPERIMENT_KIND, TRAINING_RUNS = "mlflow.experimentKind", "custom_model_development"
# MLflow's UI reads a view (columns, order) from the experiment tag `mlflow.sharedViewState.<key>`
# when its URL says `viewStateShareKey=<key>`, and its sidebar mode from `workflowType=` (else the
# browser's stored choice, GenAI by default): `benchmark ui` links to both.
SHARED_VIEW_PREFIX, JOBS_VIEW = "mlflow.sharedViewState.", "jobs"
UI_RUNS_QUERY = f"workflowType=machine_learning&viewStateShareKey={JOBS_VIEW}"
UI_MODELS_QUERY = "workflowType=machine_learning"  # the Models tab: its metric columns, grouped by dataset
# Who owns a RUNNING run (benchmark.store.liveness).
HOST, PID, PID_STARTED, HEARTBEAT = "host", "pid", "pid_started", "heartbeat"

# Tags of job runs.
JOB_HASH = "job_hash"
METHOD = "method"
SOURCE = "source"
SEED = "seed"
SWEEP_PREFIX = "sweep."  # sweep.<dotted key> = the swept value (benchmark.jobs.sweep)
# The domain-generalization recipes the job wore, as its training extensions name them ("swad+sam";
# "" for none): tables read "erm+swad" from it.
DG_RECIPES = "dg_recipes"

# Params read back when building tables.
BACKBONE = "backbone"  # "<name>:<weights>"
DATA_PREFIX = "data."  # data.<dataset>:<split> = the split's fingerprint, one per split a job read

# Metrics.
SOURCE_VAL = "source_val"  # metric prefix of the source's validation split: source_val/<metric>

# How a metric reads: accuracy-like ones and ECE and Brier are shown in percent (points); NLL in
# nats. ECE, NLL and Brier are better when lower.
LOWER_IS_BETTER = frozenset({"ece", "nll", "brier"})
DISPLAY_SCALE = {"nll": 1.0}


def metric_scale(metric: str) -> float:
    return DISPLAY_SCALE.get(metric, 100.0)


def metric_unit(metric: str) -> str:
    return "nats" if metric_scale(metric) == 1.0 else "%"
MEAN_ACC = "test/mean_acc"  # over every target, the source's own test set included (the paper's Mean)
MEAN_UNSEEN_ACC = "test/mean_unseen_acc"  # over the targets the job did not train on (benchmark.core.sources)
JOB_SECONDS = "time/job_seconds"
SAFE_SEP = "."  # dataset names like synth5/studio become synth5.studio in metric keys


def safe_name(dataset: str) -> str:
    """A dataset's name as it appears inside metric keys and artifact folders (MLflow allows
    neither the `@` nor the `=` of a slice's name: `fog@3` is `fog_at_3`, `age=4-19` `age_is_4-19`)."""
    return dataset.replace("/", SAFE_SEP).replace("@", "_at_").replace("=", "_is_")


def target_prefix(target: str) -> str:
    """The prefix of a target's test metrics: `test/<target>` (then `/acc`, `/macro_f1`, ...)."""
    return f"test/{safe_name(target)}"


def target_metric(target: str, metric: str) -> str:
    return f"{target_prefix(target)}/{metric}"


def parse_test_metric(key: str) -> tuple[str, str] | None:
    """(safe target name, metric) of a `test/<target>/<metric>` key; None for other keys."""
    if not key.startswith("test/"):
        return None
    parts = key[len("test/"):].split("/", 1)
    return (parts[0], parts[1]) if len(parts) == 2 else None


def data_param(dataset: str, split: str) -> str:
    return f"{DATA_PREFIX}{dataset}:{split}"


def datasets_read(params: dict[str, str]) -> list[str]:
    """The datasets a job run read, from its data.<dataset>:<split> params."""
    return sorted({k[len(DATA_PREFIX):].rsplit(":", 1)[0] for k in params if k.startswith(DATA_PREFIX)})


def job_run_name(method: str, source: str, seed: int) -> str:
    return f"{method}-{safe_name(source)}-s{seed}"


def sweep_label(values: dict) -> str:
    """How a sweep point is written in tags, tables and figures: "name=value, ..." by the last key part."""
    return ", ".join(f"{k.split('.')[-1]}={v}" for k, v in sorted(values.items()))


def legacy_dg_label(values: dict) -> str:
    """The DG label of a run logged before the `dg_recipes` tag existed, from its `recipe.*` params
    (the recipes there were then: SWAD, SAM, ASAM, MixStyle); later runs carry the tag."""
    def on(key: str) -> bool:
        return str(values.get(key, "")).strip().lower() not in ("", "0", "0.0", "false", "none")

    names = {"swad": on("swad"), "sam": on("sam_rho") and not on("sam_adaptive"),
             "asam": on("sam_rho") and on("sam_adaptive"), "mixstyle": on("mixstyle")}
    return "+".join(name for name in ("swad", "sam", "asam", "mixstyle") if names[name])

# Where a FINISHED job's trained method (state_dict.pt, method.json) lies: in its run's LoggedModel
# (benchmark.deploy.logged_model), or, in the JSON-lines store and in stores written before models
# were, under the run's own artifacts.
MODEL_CHECKPOINT = "artifacts/checkpoint"
RUN_CHECKPOINT = "model"
