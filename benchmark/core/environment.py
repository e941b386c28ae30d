"""What a job's numbers depend on besides its hash: the machine and the libraries it ran on.

The same job (same hash) gives bitwise the same numbers only on the same machine type with the
same thread count and library versions: another CPU model, another thread count (a reduction
split differently) or another GPU changes the last bits, and after training the accuracies.
Every job run records these as `env.*` params, and `benchmark table` warns when one table mixes
runs of different environments.
"""

from __future__ import annotations

import platform
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def cpu_model() -> str:
    """The CPU's model name (Linux /proc/cpuinfo), else what the platform module says."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def environment(device: torch.device) -> dict[str, str]:
    """The `env.*` params of a job run on `device` (call after the thread count is set)."""
    import torch  # here, not above: tables read SIGNATURE_KEYS without torch

    env = {"env.torch": torch.__version__, "env.threads": str(torch.get_num_threads()),
           "env.cpu": cpu_model(), "env.cpu_capability": torch.backends.cpu.get_cpu_capability(),
           "env.deterministic_algorithms": str(torch.are_deterministic_algorithms_enabled())}
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        env.update({"env.device": torch.cuda.get_device_name(device), "env.compute_capability": f"{major}.{minor}",
                    "env.cuda": str(torch.version.cuda), "env.cudnn": str(torch.backends.cudnn.version()),
                    # What else the last bits depend on, on CUDA: cuDNN's algorithm choice and TF32.
                    "env.cudnn_deterministic": str(torch.backends.cudnn.deterministic),
                    "env.cudnn_benchmark": str(torch.backends.cudnn.benchmark),
                    "env.cudnn_allow_tf32": str(torch.backends.cudnn.allow_tf32),
                    "env.matmul_allow_tf32": str(torch.backends.cuda.matmul.allow_tf32)})
    else:
        env["env.device"] = "cpu"
    return env


# execution.fused (benchmark.store.schema.FUSED; core cannot import the store): how many jobs
# trained as one fused model; like the thread count it changes the last bits. 1 (unfused) counts
# as not recorded, as in older runs.
SIGNATURE_KEYS = ("env.device", "env.cpu", "env.cpu_capability", "env.threads", "env.torch", "env.cuda",
                  "execution.fused")


def signature(params: dict) -> str:
    """A short text that differs between runs whose numbers may differ in the last bits."""
    parts = [f"{k.removeprefix('env.')}={params[k]}" for k in SIGNATURE_KEYS
             if params.get(k) is not None and str(params.get(k)) not in ("", "None", "nan")
             and not (k == "execution.fused" and str(params[k]) == "1")]
    return ", ".join(parts) if parts else "environment not recorded"


def default_threads(jobs_at_once: int) -> int:
    """Threads per job when `jobs_at_once` jobs share this machine's cores."""
    from .cores import usable_cores

    return max(1, usable_cores() // max(1, jobs_at_once))
