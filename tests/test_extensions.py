"""The training-extension contract (benchmark.training.extensions): every extension registered and
owning its recipe fields, options read without importing torch, the loop naming none of them,
refusals before training, a resume point that cannot be written costing nothing but itself, and
SWAD's BatchNorm and last segment as upstream runs them."""

from __future__ import annotations

import ast
import inspect
import warnings

import pytest
import torch

from benchmark.core.errors import BenchmarkError
from benchmark.training import trainer
from benchmark.training.extensions import EXTENSIONS, load_extensions, option_index
from benchmark.training.recipe import LoopSettings, Recipe

CPU = torch.device("cpu")


def test_every_extension_owns_its_recipe_fields_and_the_ast_index_reads_them_as_declared():
    load_extensions()
    index = {entry.name: entry for entry in option_index()}
    assert set(index) == set(EXTENSIONS.names())
    for name in EXTENSIONS.names():
        cls = EXTENSIONS.get(name)
        declared = [(f.name, f.default) for f in cls.option_fields()]
        assert [(n, d) for n, _, d in index[name].fields] == declared, name
        for field, _ in declared:
            assert Recipe.OWNER[field] == f"extension {name}"
    loop_fields = {f for f, owner in Recipe.OWNER.items() if owner == "the loop"}
    assert loop_fields == set(LoopSettings.__dataclass_fields__)


def test_benchmark_recipes_lists_every_extension_with_its_options(capsys):
    from benchmark.cli import main

    load_extensions()
    assert main(["recipes"]) == 0
    out = capsys.readouterr().out
    for name in EXTENSIONS.names():
        assert f"| {name} " in out
    assert "sd_reg = 0.0" in out and "swad_bn = 'freeze'" in out and "(always on)" in out


def test_a_recipe_is_built_and_checked_without_torch_until_an_option_is_set():
    import subprocess
    import sys

    code = ("import sys\nfrom benchmark.training.recipe import Recipe\nRecipe(epochs=3)\n"
            "print('torch' in sys.modules)\nRecipe(sam_rho=0.05)\nprint('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.split() == ["False", "True"], out.stderr


def test_options_are_checked_by_their_extension_naming_the_field():
    for bad, field in [({"sam_rho": -1.0}, "recipe.sam_rho"), ({"swad_bn": "train"}, "recipe.swad_bn"),
                       ({"mixstyle": "3,1"}, "recipe.mixstyle"), ({"warmup_steps": 3}, "recipe.warmup_steps"),
                       ({"sync_every": 0}, "recipe.sync_every")]:
        with pytest.raises(BenchmarkError, match=field):
            Recipe(**bad)


def _read_in(function) -> tuple[set[str], set[str]]:
    """(every identifier, attribute and string word; every field read off a recipe) in a
    function's code, its docstring left out."""
    tree = ast.parse(inspect.getsource(function).lstrip())
    body = tree.body[0].body
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        body = body[1:]
    names, recipe_fields = set(), set()
    for node in (n for stmt in body for n in ast.walk(stmt)):
        if isinstance(node, ast.Name):
            names.add(node.id)
        elif isinstance(node, ast.Attribute):
            names.add(node.attr)
            owner = node.value
            if (isinstance(owner, ast.Name) and owner.id == "recipe") or \
                    (isinstance(owner, ast.Attribute) and owner.attr == "recipe"):
                recipe_fields.add(node.attr)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            names.update(node.value.replace(".", " ").split())
    return names, recipe_fields


def test_the_loop_body_names_no_extension_no_option_and_no_method():
    load_extensions()
    extensions = [EXTENSIONS.get(n) for n in EXTENSIONS.names()]
    named = set(EXTENSIONS.names()) | {"sam", "swad", "mixstyle", "randconv", "cafe", "erm", "resnet18", "timm",
                                       "openclip"}
    options = {f for cls in extensions for f in cls.defaults()}
    for function in (trainer.run_loop, trainer._train, trainer._end_epoch):
        names, recipe_fields = _read_in(function)
        assert not names & named, function.__name__
        assert recipe_fields and not recipe_fields & options, function.__name__  # only the loop's own fields


@pytest.fixture(scope="module")
def tiny():
    from benchmark.data import DATASETS, decode_split

    return decode_split(DATASETS.get("synth5/studio").load(None, "test", scale=0.02), 32)


def _erm(backbone: str = "mobilenet_v2"):
    from benchmark.models.backbones import BackboneSpec
    from benchmark.training.method import Components
    from benchmark.training.plugins import build_method

    return build_method("erm", {"lr": 3e-3}, Components(BackboneSpec(backbone, "none")))


def test_a_fused_group_refuses_an_extension_that_cannot_fuse(tiny):
    from benchmark.training.fused import fit_fused
    from benchmark.training.method import MemoryLog

    recipes = [Recipe(epochs=1, batch_size=8, input_size=32, seed=s, progress=False, sam_rho=0.05) for s in (1, 2)]
    with pytest.raises(BenchmarkError, match="fused jobs cannot wear sam"):
        fit_fused([_erm(), _erm()], [tiny, tiny], recipes=recipes, device=CPU, logs=[MemoryLog(), MemoryLog()],
                  epoch_ends=[None, None])


def test_a_resume_point_that_cannot_be_written_warns_once_and_training_goes_on(tmp_path, tiny):
    from benchmark.training.method import MemoryLog
    from benchmark.training.resume import ResumePoint

    point = ResumePoint.open(tmp_path, "job", "run-1")
    calls = []

    def full_disk(state):
        calls.append(state["epoch"])
        raise OSError(28, "No space left on device")

    point.save = full_disk
    method, ends = _erm(), []
    recipe = Recipe(epochs=3, batch_size=16, input_size=32, seed=1, progress=False, prefetch=0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        method.fit(tiny, recipe=recipe, device=CPU, log=MemoryLog(), epoch_end=ends.append, resume=point)
    assert ends == [1, 2, 3] and calls == [1, 2]  # trained to the end; each due write was tried
    messages = [str(w.message) for w in caught if "resume point" in str(w.message)]
    assert len(messages) == 1 and "No space left on device" in messages[0]


def _batch_norms(model):
    return [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]


@pytest.mark.slow
def test_swad_freezes_batchnorm_by_default_and_recomputes_it_when_asked(tiny):
    """Upstream's freeze_bn: BatchNorm normalises with its running statistics and never updates
    them while training (the affine parameters train); "recompute": BN trains, and the averaged
    model's statistics are re-estimated over swad_bn_batches batches (update_bn)."""
    from benchmark.training.method import MemoryLog

    base = dict(epochs=2, batch_size=8, input_size=32, seed=1, progress=False, prefetch=0, swad=True,
                swad_eval_steps=2)
    method = _erm()
    seen_modes = []
    original = method.training_step

    def spy(batch):
        seen_modes.append({m.training for m in _batch_norms(method.model)})
        return original(batch)

    method.training_step = spy
    fresh = _erm()
    fresh.build(CPU, 32)
    start = {k: v.clone() for k, v in fresh.model.state_dict().items() if "running" in k}
    method.fit(tiny, recipe=Recipe(**base), device=CPU, log=MemoryLog(), validation=tiny)
    assert seen_modes and all(modes == {False} for modes in seen_modes)  # every step: BN in eval mode
    after = method.model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in start.items())  # statistics never moved
    affine = [n for n, m in method.model.named_modules() if m in _batch_norms(method.model)]
    assert any(not torch.equal(after[f"{n}.weight"], fresh.model.state_dict()[f"{n}.weight"]) for n in affine)
    recomputed = _erm()
    recomputed.fit(tiny, recipe=Recipe(**base, swad_bn="recompute", swad_bn_batches=3), device=CPU, log=MemoryLog(),
                   validation=tiny)
    norms = _batch_norms(recomputed.model)
    assert norms and all(int(m.num_batches_tracked) == 3 for m in norms)  # re-estimated over exactly 3 batches
    assert all(m.momentum == 0.1 for m in norms)  # momenta restored after update_bn


def test_swad_stops_at_the_last_step_that_ends_a_segment(tiny):
    """Upstream rounds its steps to ⌊n/f⌋·f + 1: no partial segment. Here T planned steps with
    (T - 1) not a multiple of f end after step ⌊(T - 1)/f⌋·f, evaluated there, and no later."""
    from benchmark.training.method import MemoryLog

    batches = -(-len(tiny) // 8)
    total = 2 * batches
    f = next(k for k in range(2, total) if (total - 1) % k)
    last = (total - 1) // f * f
    log, ends = MemoryLog(), []
    recipe = Recipe(epochs=2, batch_size=8, input_size=32, seed=1, progress=False, prefetch=0, swad=True,
                    swad_eval_steps=f, swad_n_converge=100)  # never converges: the model is the last segment
    _erm().fit(tiny, recipe=recipe, device=CPU, log=log, epoch_end=ends.append, validation=tiny)
    summary = next(v for _, v in log.history if "swad/evaluations" in v)
    assert summary["swad/evaluations"] == last // f + 1
    assert summary["swad/end_step"] == last and summary["swad/start_step"] == last - f + 1
    assert ends[-1] == (last // batches) + 1  # evaluated in the epoch where training stopped
