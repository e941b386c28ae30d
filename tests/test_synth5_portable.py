"""synth5 is the same bytes on every machine: its pixels enter the job hashes, so a generator
whose output moved with the CPU would train the same job twice on a shared store, and turn the
recorded job hashes red on one of the machine types (as generator version 4 did: its float32
greyscale dot product went through OpenBLAS, whose kernel, chosen by OPENBLAS_CORETYPE, the
environment sets one way on the AMD machines and not at all on the Intel ones).

Two kinds of check. Per-stage golden digests (tests/data/synth5_stages.json) of the first 40
images of every domain: when the suite meets a machine that draws other bytes, the failure names
the first stage that differs. (Version 4's greyscale step moved one pixel in 40 webcam images
between OpenBLAS's Haswell kernels and the auto-detected ones: a few images would not show it.) And the generator run again in fresh processes under every switch
that changes numeric dispatch (numpy's SIMD targets, OpenBLAS's kernels, ATen's capability,
glibc's CPU features, libm's transcendental functions moved by one ulp): the digests must not
move, and the generator must call none of libm's CPU-dispatched functions.

Record again (after a deliberate change of the drawing, with GENERATOR_VERSION bumped):
`python -m tests.test_synth5_portable --record`.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from benchmark.data.synth5 import DOMAINS, GENERATOR_VERSION, domain_digest, stage_digests

RECORD = Path(__file__).parent / "data" / "synth5_stages.json"
SHIM_SOURCE = Path(__file__).parent / "libm_nudge.c"
IMAGES = 40  # per domain, from the seed-0 train split
DOMAIN_SCALE = 0.02  # the whole-domain digests: every split, 7-48 images each


def current() -> dict:
    return {"generator_version": GENERATOR_VERSION, "stages": stage_digests(IMAGES),
            "domains": {name: domain_digest(name, 0, DOMAIN_SCALE) for name in DOMAINS}}


def first_differences(recorded: dict, now: dict) -> list[str]:
    """One line per domain whose stages differ: the first stage that does, both digests."""
    lines = []
    for domain, stages in recorded.items():
        stage = next((s for s in stages if stages[s] != now[domain].get(s)), None)
        if stage is not None:
            lines.append(f"synth5/{domain}: first differs at stage '{stage}' "
                         f"(recorded {stages[stage]}, here {now[domain].get(stage)})")
    return lines


def test_every_stage_draws_the_recorded_bytes(tmp_path, monkeypatch):
    monkeypatch.setenv("BENCHMARK_CACHE", str(tmp_path))  # the domain digests from freshly drawn files
    recorded = json.loads(RECORD.read_text())
    now = current()
    assert now["generator_version"] == recorded["generator_version"], "GENERATOR_VERSION changed: record again"
    differences = first_differences(recorded["stages"], now["stages"])
    assert not differences, ("synth5 draws other bytes on this machine (docs/datasets.md, 'synth5 on another "
                             "machine'):\n" + "\n".join(differences))
    assert now["domains"] == recorded["domains"]


# Generation in a fresh process: the stage digests, and how many CPU-dispatched libm calls it made
# (when the nudging shim is preloaded).
CHILD = """
import ctypes, json, os
from benchmark.data.synth5 import stage_digests
shim = os.environ.get("NUDGE_SHIM")
calls = ctypes.c_long.in_dll(ctypes.CDLL(shim), "nudge_dispatched_calls") if shim else None
before = calls.value if shim else 0
digests = stage_digests(%d)
print(json.dumps({"stages": digests, "dispatched_calls": (calls.value - before) if shim else None}))
""" % IMAGES


def cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    line = next((ln for ln in text.splitlines() if ln.startswith("flags")), "")
    return set(line.partition(":")[2].split())


def numpy_dispatch_off() -> str:
    """Every SIMD target numpy dispatches to on this CPU beyond its baseline, for NPY_DISABLE_CPU_FEATURES."""
    from numpy._core import _multiarray_umath as umath

    found = [f for f in umath.__cpu_dispatch__ if umath.__cpu_features__.get(f)]
    return ",".join(f for f in found if f not in umath.__cpu_baseline__)


def switches() -> list[tuple[str, dict[str, str | None]]]:
    """(name, environment changes; None removes a variable) of each run."""
    out: list[tuple[str, dict[str, str | None]]] = [
        ("as is", {}),
        ("OpenBLAS kernels auto-detected", {"OPENBLAS_CORETYPE": None, "OPENBLAS_L2_SIZE": None}),
        ("OpenBLAS Haswell kernels", {"OPENBLAS_CORETYPE": "Haswell"}),
        ("OpenBLAS Prescott kernels", {"OPENBLAS_CORETYPE": "Prescott"}),
        ("numpy at its baseline only", {"NPY_DISABLE_CPU_FEATURES": numpy_dispatch_off() or None}),
        ("ATen default capability", {"ATEN_CPU_CAPABILITY": "default"}),
        ("glibc without AVX2, FMA, AVX-512", {"GLIBC_TUNABLES": "glibc.cpu.hwcaps=-AVX2,-FMA,-AVX512F"}),
    ]
    if "avx512f" in cpu_flags():
        out.append(("OpenBLAS SkylakeX kernels", {"OPENBLAS_CORETYPE": "SkylakeX"}))
    return out


def start_child(changes: dict[str, str | None], code: str = CHILD) -> subprocess.Popen:
    env = dict(os.environ)
    for key, value in changes.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def child_output(child: subprocess.Popen) -> Any:
    out, err = child.communicate(timeout=120)
    assert child.returncode == 0, err[-2000:]
    return json.loads(out.splitlines()[-1])


def run_child(changes: dict[str, str | None], code: str = CHILD) -> Any:
    return child_output(start_child(changes, code))


@pytest.fixture(scope="module")
def here() -> dict:
    return stage_digests(IMAGES)


@pytest.fixture(scope="module")
def switched() -> dict[str, subprocess.Popen]:
    """Every switch's generation, started at once (each is a fresh process)."""
    children = {name: start_child(changes) for name, changes in switches()}
    yield children
    for child in children.values():
        child.kill()
        child.communicate()


@pytest.mark.parametrize("name", [name for name, _ in switches()])
def test_no_dispatch_switch_moves_a_pixel(name, switched, here):
    got = child_output(switched[name])["stages"]
    differences = first_differences(here, got)
    assert not differences, f"under {name}:\n" + "\n".join(differences)


@pytest.fixture(scope="module")
def nudge_shim(tmp_path_factory) -> Path:
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None or platform.system() != "Linux":
        if os.environ.get("BENCHMARK_CI"):
            pytest.fail("no C compiler to build tests/libm_nudge.c (CI must have one)")
        pytest.skip("needs a C compiler and Linux's LD_PRELOAD")
    out = tmp_path_factory.mktemp("shim") / "libm_nudge.so"
    subprocess.run([compiler, "-shared", "-fPIC", "-O1", "-fno-builtin", "-o", str(out), str(SHIM_SOURCE),
                    "-ldl", "-lm"], check=True, capture_output=True)
    return out


def test_libm_one_ulp_off_moves_no_pixel_and_is_not_called(nudge_shim, here):
    # The shim works: math.sin (libm's dispatched sin) comes back one ulp up, and is counted.
    probe = run_child({"LD_PRELOAD": str(nudge_shim), "NUDGE_SHIM": str(nudge_shim)},
                      "import ctypes, json, math, os\n"
                      "n = ctypes.c_long.in_dll(ctypes.CDLL(os.environ['NUDGE_SHIM']), 'nudge_dispatched_calls')\n"
                      "before = n.value\nx = math.sin(1.0)\n"
                      "print(json.dumps({'sin': x.hex(), 'calls': n.value - before}))")
    import math

    assert probe == {"sin": math.nextafter(math.sin(1.0), math.inf).hex(), "calls": 1}
    got = run_child({"LD_PRELOAD": str(nudge_shim), "NUDGE_SHIM": str(nudge_shim)})
    assert not first_differences(here, got["stages"])
    assert got["dispatched_calls"] == 0


def test_the_glibc_switch_is_in_force_where_the_cpu_has_fma():
    """Else the glibc run above would test nothing: without FMA, glibc's sin gives other last bits."""
    if "fma" not in cpu_flags() or platform.machine() != "x86_64":
        pytest.skip("glibc has no FMA build of sin to switch off on this CPU")
    code = ("import json, math\n"
            "print(json.dumps([math.sin(k / 7.0).hex() for k in range(1, 4000)]))")
    plain = run_child({}, code)
    without = run_child({"GLIBC_TUNABLES": "glibc.cpu.hwcaps=-AVX2,-FMA,-AVX512F"}, code)
    assert plain != without


if __name__ == "__main__" and "--record" in sys.argv:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        os.environ["BENCHMARK_CACHE"] = tmp
        RECORD.write_text(json.dumps(current(), indent=1) + "\n")
    print(f"wrote {RECORD}")
