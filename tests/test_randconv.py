"""RandConv (benchmark.training.extensions.randconv) against wildphoton/RandConv, transcribed in
float64 below: the layer's draws and outputs (one and several kernel sizes, mixing, identity
probability, random bias, clamping) from the same seeds, the consistency loss, and one training
step of `randconv_trainer.py: train_one_epoch` on erm, to 1e-12; its refusals, hash and label."""

from __future__ import annotations

import copy
import math
import random
import types

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from benchmark.core.errors import BenchmarkError
from benchmark.models.backbones import BackboneSpec
from benchmark.training.extensions.randconv import RandConv, RandomConvolution, consistency_loss
from benchmark.training.method import Batch, Components
from benchmark.training.plugins import build_method
from benchmark.training.recipe import Recipe

CPU = torch.device("cpu")
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


# -- upstream, transcribed (lib/networks/rand_conv.py): the paths a 3-channel image takes ----------
class UpstreamRandConv2d(nn.Conv2d):
    def __init__(self, in_channels, out_channels, kernel_size, rand_bias=True, distribution="kaiming_normal",
                 **kwargs):
        super().__init__(in_channels, out_channels, kernel_size, bias=rand_bias, **kwargs)
        self.rand_bias, self.distribution = rand_bias, distribution

    def randomize(self):
        new_weight = torch.zeros_like(self.weight)
        with torch.no_grad():
            if self.distribution == "kaiming_normal":
                nn.init.kaiming_normal_(new_weight, nonlinearity="conv2d")
            elif self.distribution == "kaiming_uniform":
                nn.init.kaiming_uniform_(new_weight, nonlinearity="conv2d")
        self.weight = nn.Parameter(new_weight.detach())
        if self.bias is not None and self.rand_bias:
            new_bias = torch.zeros_like(self.bias)
            fan_in, _ = nn.init._calculate_fan_in_and_fan_out(self.weight)
            bound = 1 / math.sqrt(fan_in)
            nn.init.uniform_(new_bias, -bound, bound)
            self.bias = nn.Parameter(new_bias)


class UpstreamMultiScale(nn.Module):
    def __init__(self, kernel_sizes, rand_bias, distribution):
        super().__init__()
        self.multiscale_rand_convs = nn.ModuleDict(
            {str(k): UpstreamRandConv2d(3, 3, k, padding=k // 2, rand_bias=rand_bias, distribution=distribution)
             for k in kernel_sizes})
        self.scales = kernel_sizes
        self.randomize()

    def randomize(self):
        self.current_scale = str(self.scales[random.randint(0, len(self.scales) - 1)])
        self.multiscale_rand_convs[self.current_scale].randomize()

    def forward(self, x):
        return self.multiscale_rand_convs[self.current_scale](x)


class UpstreamRandConvModule(nn.Module):
    def __init__(self, kernel_size, mixing=False, identity_prob=0.0, rand_bias=False, distribution="kaiming_normal",
                 clamp_output=False):
        super().__init__()
        self.range_up = (torch.ones(3).reshape(3, 1, 1) - torch.tensor(MEAN).reshape(3, 1, 1)) / torch.tensor(STD).reshape(3, 1, 1)
        self.range_low = (torch.zeros(3).reshape(3, 1, 1) - torch.tensor(MEAN).reshape(3, 1, 1)) / torch.tensor(STD).reshape(3, 1, 1)
        self.clamp_output = clamp_output
        self.randconv = UpstreamMultiScale(kernel_size, rand_bias, distribution)
        self.mixing = mixing
        if mixing:
            self.alpha = random.random()
        self.identity_prob = identity_prob

    def forward(self, input):
        if not (self.identity_prob > 0 and torch.rand(1) < self.identity_prob):
            output = self.randconv(input)
            if self.mixing:
                output = self.alpha * output + (1 - self.alpha) * input
            if self.clamp_output:
                output = torch.max(torch.min(output, self.range_up.to(input)), self.range_low.to(input))
        else:
            output = input
        return output

    def randomize(self):
        self.randconv.randomize()
        if self.mixing:
            self.alpha = random.random()


def upstream_consistency(outputs, outputs1, outputs2):
    p_clean, p_aug1, p_aug2 = F.softmax(outputs, dim=1), F.softmax(outputs1, dim=1), F.softmax(outputs2, dim=1)
    p_mixture = torch.clamp((p_clean + p_aug1 + p_aug2) / 3., 1e-7, 1).log()
    return (F.kl_div(p_mixture, p_clean, reduction="batchmean") + F.kl_div(p_mixture, p_aug1, reduction="batchmean")
            + F.kl_div(p_mixture, p_aug2, reduction="batchmean")) / 3.


def seeded(seed: int):
    torch.manual_seed(seed)
    random.seed(seed)


SETTINGS = [dict(sizes=[3]), dict(sizes=[1, 3, 5, 7], mixing=True), dict(sizes=[3, 5], identity_prob=0.5),
            dict(sizes=[1, 3, 5, 7], mixing=True, rand_bias=True, clamp=True),
            dict(sizes=[3], distribution="kaiming_uniform")]


@pytest.mark.parametrize("setting", SETTINGS, ids=lambda s: ",".join(f"{k}={v}" for k, v in s.items()))
def test_the_layer_draws_and_convolves_as_upstreams_in_float64(setting):
    sizes = setting["sizes"]
    kwargs = {k: v for k, v in setting.items() if k != "sizes"}
    seeded(7)
    ours = RandomConvolution(sizes, **kwargs)
    seeded(7)
    theirs = UpstreamRandConvModule(sizes, kwargs.get("mixing", False), kwargs.get("identity_prob", 0.0),
                                    kwargs.get("rand_bias", False), kwargs.get("distribution", "kaiming_normal"),
                                    kwargs.get("clamp", False))  # drawn in float32, as upstream trains
    x = torch.randn(4, 3, 16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    for draw in range(12):
        state = (torch.get_rng_state(), random.getstate())
        mine = ours(x)
        torch.set_rng_state(state[0])
        random.setstate(state[1])
        reference = copy.deepcopy(theirs).double()(x)  # applied in float64
        assert (mine - reference).abs().max().item() < 1e-12, draw
        state = (torch.get_rng_state(), random.getstate())
        ours.randomize()
        after = (torch.get_rng_state(), random.getstate())
        torch.set_rng_state(state[0])
        random.setstate(state[1])
        theirs.randomize()
        assert torch.equal(after[0], torch.get_rng_state()) and after[1] == random.getstate()  # the same draws
    if kwargs.get("identity_prob"):
        assert any(torch.equal(ours(x), x) for _ in range(8))  # the identity is taken some of the time


def test_the_consistency_loss_equals_upstreams():
    gen = torch.Generator().manual_seed(3)
    logits = [torch.randn(5, 7, dtype=torch.float64, generator=gen) * 3 for _ in range(3)]
    assert abs(consistency_loss(logits).item() - upstream_consistency(*logits).item()) < 1e-12


@pytest.mark.parametrize("augmix", [False, True])
def test_one_training_step_equals_train_one_epoch_in_float64(augmix):
    """Upstream's step on one domain, consistency loss on (weight 10, mixing, kernels 1-7): ours
    through the extension's hooks and erm's own training_step, then one Adam step."""
    method = build_method("erm", {"lr": 1e-3, "weight_decay": 0.0}, Components(BackboneSpec("mobilenet_v2", "none")))
    method.build(CPU, 16)
    method.model.double().train()
    reference = copy.deepcopy(method.model)
    net = lambda v: reference["fc"](reference["backbone"](v))  # noqa: E731
    x = torch.randn(6, 3, 16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([0, 1, 2, 3, 4, 5])
    recipe = Recipe(randconv=True, randconv_kernel_sizes="1,3,5,7", randconv_mixing=True, randconv_consistency=True,
                    randconv_consistency_weight=10.0, randconv_augmix=augmix)

    seeded(11)
    extension = RandConv(recipe)
    loop = types.SimpleNamespace(method=method, batches_done=0)
    extension.setup(loop)
    batch = extension.transform_batch(loop, Batch(x.clone(), y, torch.arange(6).numpy()))
    loss, parts = method.training_step(batch)
    objective = extension.loss(loop, batch, loss, parts)
    ours = torch.optim.Adam(method.model.parameters(), lr=1e-3)
    ours.zero_grad()
    objective.backward()
    ours.step()

    seeded(11)
    module = UpstreamRandConvModule([1, 3, 5, 7], mixing=True)
    optimizer = torch.optim.Adam(reference.parameters(), lr=1e-3)
    applied = lambda v: copy.deepcopy(module).double()(v)  # noqa: E731 - drawn in float32, applied in float64
    module.randomize()  # batch_idx == 0
    inputs = x.clone() if augmix else applied(x.clone())
    outputs = net(inputs)
    upstream = F.cross_entropy(outputs, y)
    module.randomize()
    outputs1 = net(applied(inputs))
    module.randomize()
    outputs2 = net(applied(inputs))
    upstream = upstream + upstream_consistency(outputs, outputs1, outputs2) * 10.0
    upstream.backward()
    optimizer.step()

    assert abs(objective.item() - upstream.item()) < 1e-12
    for (name, p), q in zip(method.model.named_parameters(), reference.parameters()):
        assert (p - q).abs().max().item() < 1e-12, name


def test_redrawn_at_each_epochs_first_batch_and_every_freq_batches():
    seeded(0)
    extension = RandConv(Recipe(randconv=True, randconv_freq=3))
    loop = types.SimpleNamespace(method=None, batches_done=0)
    extension.setup(loop)
    draws = []
    for done in range(7):
        loop.batches_done = done
        before = extension.layer.convs[3].weight.clone()
        extension.transform_batch(loop, Batch(torch.zeros(1, 3, 8, 8), torch.zeros(1, dtype=torch.long), None))
        draws.append(not torch.equal(before, extension.layer.convs[3].weight))
    assert draws == [True, False, True, False, False, True, False]  # batch_idx 0, then (idx + 1) % 3 == 0


def test_options_hash_label_and_refusals():
    from benchmark.jobs.plan import expand, plan_from
    from benchmark.jobs.protocol import load_protocol

    assert not any(k.startswith("randconv") for k in Recipe().identity())
    assert Recipe(randconv=True).identity()["randconv"] is True and Recipe(randconv=True).trains_alone()
    assert Recipe(randconv=True).dg_label() == "randconv" and Recipe(randconv=True, sam_rho=0.05).dg_label() == "sam+randconv"
    for bad in ({"randconv_kernel_sizes": "2"}, {"randconv_identity_prob": 1.5}, {"randconv_freq": 0},
                {"randconv_distribution": "uniform"}):
        with pytest.raises(BenchmarkError, match="recipe." + next(iter(bad))):
            Recipe(randconv=True, **bad)

    def jobs(method, **sets):
        protocol = load_protocol("synth5", {"seeds": "[0]", "sources": '["synth5/studio"]', **sets})
        return expand(protocol, [method], plan_from(protocol, None, {}))

    (job,) = jobs("erm", **{"recipe.randconv": "true", "recipe.randconv_kernel_sizes": '"1,3,5,7"'})
    assert job.identity["recipe"]["randconv_kernel_sizes"] == "1,3,5,7"
    with pytest.raises(BenchmarkError, match="recipe.randconv: method clip_zeroshot is not trained by the shared loop"):
        jobs("clip_zeroshot", **{"recipe.randconv": "true"})
    scn = build_method("scn", {}, Components(BackboneSpec("mobilenet_v2", "none")))
    with pytest.raises(BenchmarkError, match="randconv_consistency: scn decides on the host"):
        RandConv(Recipe(randconv=True, randconv_consistency=True)).setup(types.SimpleNamespace(method=scn))


@pytest.mark.slow
def test_a_grid_with_randconv_and_sd_shows_both_in_the_recipes_table(tmp_path, capsys):
    """Both new recipes end to end (spectral decoupling's own end-to-end test merged here: the same
    grid trains it, logs its penalty and shows its column)."""
    from benchmark.cli import main

    from .test_runner import finished_runs, write_protocol
    from .test_tables import markdown_rows

    protocol = write_protocol(tmp_path, epochs=1)
    uri = f"jsonl:{tmp_path}/runs"
    assert main(["run", "--protocol", str(protocol), "--tracking-uri", uri, "--methods", "erm",
                 "--sweep", "recipe.randconv=false,true", "--set", "recipe.randconv_consistency=true",
                 "--set", "recipe.randconv_mixing=true"]) == 0
    assert main(["run", "--protocol", str(protocol), "--tracking-uri", uri, "--methods", "erm",
                 "--set", "recipe.sd_reg=0.1"]) == 0
    runs = finished_runs(uri)
    assert sorted(r.tags.get("dg_recipes") for r in runs) == ["", "", "randconv", "randconv", "sd", "sd"]
    assert all("train/randconv_consistency" in r.metrics for r in runs if r.tags.get("dg_recipes") == "randconv")
    assert all("train/sd_penalty" in r.metrics for r in runs if r.tags.get("dg_recipes") == "sd")
    capsys.readouterr()
    out = tmp_path / "recipes.md"
    assert main(["table", "--protocol", "tiny", "--tracking-uri", uri, "--table", "recipes", "--out", str(out)]) == 0
    md = markdown_rows(out.read_text())
    assert md[0] == ["Method", *(f"{r} {k}" for r in ("none", "randconv", "sd") for k in ("unseen", "in-domain"))]


def test_a_job_stopped_inside_an_epoch_resumes_to_the_same_weights(tmp_path):
    """The layer's current draw travels in the resume point (with randconv_freq > 1 a batch after
    the stop reuses it): stopped between two batches and resumed, the weights equal an
    uninterrupted run's, bit for bit."""
    from benchmark.data import DATASETS, decode_split
    from benchmark.training.method import MemoryLog
    from benchmark.training.resume import ResumePoint

    from .test_resume import StopInEpoch

    data = decode_split(DATASETS.get("synth5/studio").load(None, "test", scale=0.02), 32)
    recipe = Recipe(epochs=2, batch_size=2, input_size=32, seed=5, progress=False, prefetch=0, randconv=True,
                    randconv_kernel_sizes="1,3,5", randconv_freq=3, randconv_mixing=True)

    def fit(resume=None):
        method = build_method("erm", {"lr": 3e-3}, Components(BackboneSpec("mobilenet_v2", "none")))
        method.fit(data, recipe=recipe, device=CPU, log=MemoryLog(), resume=resume)
        return method

    plain = fit()
    first = ResumePoint.open(tmp_path, "job", "run-1", mid_epoch_s=0.0)
    save, seen = first.save, []

    def save_then_stop(state):
        save(state)
        seen.append(state)
        if "in_epoch" in state and state["in_epoch"]["batches"] == 3 and state["epoch"] == 1:
            raise StopInEpoch

    first.save = save_then_stop
    with pytest.raises(StopInEpoch):
        fit(first)
    resumed = fit(ResumePoint.open(tmp_path, "job", "run-2", mid_epoch_s=1e9))
    for key, value in plain.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key
