"""Test-time adaptation (benchmark.tta): each method's update against a float64 transcription of
its upstream code as written in the docs (a tiny BatchNorm network, fixed batches, equal to
1e-12), the refusals, the episodic reset, and the stream."""

from __future__ import annotations

import contextlib
import copy
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from benchmark.tta.base import TTA_METHODS, Adaptable, options_from
from benchmark.tta.evaluation import tta_specs
from benchmark.tta.stream import StreamSettings, dirichlet_order, stream_order

C = 7
TOL = dict(rtol=0, atol=1e-12)


class TinyMethod:
    """What a TTA method reads of a trained method: a model whose logits are fc(backbone(x))."""

    name = "tiny"

    def __init__(self, head: str = "linear", norm: str = "bn"):
        torch.manual_seed(0)
        norm_layer = nn.BatchNorm2d(4) if norm == "bn" else nn.GroupNorm(2, 4)
        backbone = nn.Sequential(nn.Conv2d(3, 4, 3), norm_layer, nn.ReLU(), nn.Conv2d(4, 5, 3), nn.BatchNorm2d(5)
                                 if norm == "bn" else nn.GroupNorm(1, 5), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                                 nn.Flatten())
        self.model = nn.ModuleDict({"backbone": backbone, "fc": nn.Linear(5, C)}).double()
        self.model["fc"].weight.data *= 12  # confident enough that some samples pass SAR's and EATA's E0
        for m in self.model.modules():  # trained-looking norm layers: statistics and affine away from 0/1
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
            if isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                m.weight.data.uniform_(0.5, 1.5)
                m.bias.data.uniform_(-0.2, 0.2)
        self.model.eval()
        self.head = head
        self.numerics = SimpleNamespace(autocast=contextlib.nullcontext, layout=lambda x: x, device=torch.device("cpu"))
        self.device = torch.device("cpu")
        self.hparams = SimpleNamespace(lr=1e-3)

    def logits(self, x, rows, data):
        z = self.model["backbone"](x)
        if self.head == "cosine":  # a zero-shot-like head: no linear layer's output
            return 10 * F.normalize(z, dim=1) @ F.normalize(self.model["fc"].weight, dim=1).T
        return self.model["fc"](z)


def batches(n: int = 3, size: int = 12, seed: int = 1) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(size, 3, 8, 8, generator=g, dtype=torch.float64) for _ in range(n)]


def adapted(name: str, method=None, source_val=None, **options):
    method = method or TinyMethod()
    model = Adaptable(method, C)
    x = batches(1)[0]
    model.find_head(x, torch.arange(len(x)), None)
    cls = TTA_METHODS.get(name)
    tta = cls(options_from(cls, options), model, source_val)
    tta.setup()
    tta.start()
    return tta, method


def step(tta, x):
    return tta.step(x, torch.arange(len(x)), None)


def ent(logits):
    return -(logits.softmax(1) * logits.log_softmax(1)).sum(1)


def batch_stat_copy(model: nn.Module) -> nn.Module:
    """The reference network: a copy whose BatchNorm layers normalise by the batch (TENT's set-up)."""
    ref = copy.deepcopy(model)
    for m in ref.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.track_running_stats, m.running_mean, m.running_var = False, None, None
    return ref


def bn_affine(model: nn.Module) -> list[nn.Parameter]:
    return [p for m in model.modules() if isinstance(m, nn.BatchNorm2d) for p in (m.weight, m.bias)]


def adam(params, grads, state, lr, t, b1=0.9, b2=0.999, eps=1e-8):
    """Adam's update as torch.optim.Adam (default, non-amsgrad) writes it, step t (1-based)."""
    with torch.no_grad():
        for k, (p, g) in enumerate(zip(params, grads)):
            m, v = state.get(k, (torch.zeros_like(p), torch.zeros_like(p)))
            m, v = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g * g
            state[k] = (m, v)
            denom = (v / (1 - b2 ** t)).sqrt() + eps
            p -= lr / (1 - b1 ** t) * m / denom


def sgd(params, grads, buffers, lr, momentum=0.9):
    with torch.no_grad():
        for k, (p, g) in enumerate(zip(params, grads)):
            buffers[k] = g.clone() if k not in buffers else momentum * buffers[k] + g
            p -= lr * buffers[k]


def logits_of(model, x):
    return model["fc"](model["backbone"](x))


def test_norm_predicts_with_each_batchs_own_statistics():
    tta, method = adapted("norm")
    reference = copy.deepcopy(TinyMethod().model).train()  # torch's train-mode BN on the batch
    for x in batches():
        np.testing.assert_allclose(step(tta, x), logits_of(reference, x).softmax(1).detach(), **TOL)
    # TTAB's prior: N * source statistics + (1 - N) * the batch's (unbiased variance).
    tta, _ = adapted("norm", prior=0.3)
    trained = TinyMethod().model
    x = batches(1)[0]
    h = x
    for layer in trained["backbone"]:
        if isinstance(layer, nn.BatchNorm2d):
            mean = 0.3 * layer.running_mean + 0.7 * h.mean((0, 2, 3))
            var = 0.3 * layer.running_var + 0.7 * h.var((0, 2, 3), unbiased=True)
            h = (h - mean[None, :, None, None]) / torch.sqrt(var[None, :, None, None] + layer.eps)
            h = h * layer.weight[None, :, None, None] + layer.bias[None, :, None, None]
        else:
            h = layer(h)
    np.testing.assert_allclose(step(tta, x), trained["fc"](h).softmax(1).detach(), **TOL)


def test_tent_steps_adam_on_the_norm_affines_and_predicts_before_its_update():
    tta, method = adapted("tent")
    ref = batch_stat_copy(TinyMethod().model)
    params, state = bn_affine(ref), {}
    for t, x in enumerate(batches(), start=1):
        logits = logits_of(ref, x)
        grads = torch.autograd.grad(ent(logits).mean(), params)
        adam(params, grads, state, lr=1e-3, t=t)
        np.testing.assert_allclose(step(tta, x), logits.softmax(1).detach(), **TOL)
        for ours, theirs in zip(bn_affine(method.model), params):
            np.testing.assert_allclose(ours.detach(), theirs.detach(), **TOL)
    conv = method.model["backbone"][0].weight
    assert torch.equal(conv, TinyMethod().model["backbone"][0].weight)  # nothing else moves


def test_t3a_supports_and_prediction():
    tta, method = adapted("t3a", filter_k=2)
    fc = method.model["fc"]
    w, b = fc.weight.detach(), fc.bias.detach()
    q = w @ w.T + b
    supports, labels, entropies = w.clone(), F.one_hot(q.argmax(1), C).double(), ent(q)
    for x in batches():
        z = method.model["backbone"](x).detach()
        p = fc(z).detach()
        supports = torch.cat([supports, z])
        labels = torch.cat([labels, F.one_hot(p.argmax(1), C).double()])
        entropies = torch.cat([entropies, ent(p)])
        keep = []
        y = labels.argmax(1)
        for c in range(C):
            members = [i for i in range(len(y)) if y[i] == c]
            keep += sorted(members, key=lambda i: (float(entropies[i]), i))[:2]
        supports, labels, entropies = supports[keep], labels[keep], entropies[keep]
        templates = torch.stack([sum((s / s.norm() for s, l in zip(supports, labels) if l[c] == 1),
                                     torch.zeros(5, dtype=torch.float64)) for c in range(C)])
        templates = templates / templates.norm(dim=1, keepdim=True).clamp_min(1e-12)
        np.testing.assert_allclose(step(tta, x), (z @ templates.T).softmax(1), **TOL)
        np.testing.assert_allclose(tta.supports, supports, **TOL)
    assert len(tta.supports) <= 2 * C


def test_sar_filters_climbs_steps_and_recovers():
    e0 = 0.4 * math.log(C)
    tta, method = adapted("sar", lr=0.01)
    ref = batch_stat_copy(TinyMethod().model)
    params, buffers, ema = bn_affine(ref), {}, None
    for x in batches():
        logits = logits_of(ref, x)
        h = ent(logits)
        reliable = h < e0
        grads = torch.autograd.grad(h[reliable].mean(), params)
        norm = torch.sqrt(sum((g ** 2).sum() for g in grads))
        saved = [p.detach().clone() for p in params]
        with torch.no_grad():
            for p, g in zip(params, grads):
                p += 0.05 * g / (norm + 1e-12)
        h2 = ent(logits_of(ref, x))[reliable]
        loss2 = h2[h2 < e0].mean()
        if not torch.isnan(loss2):
            value = float(loss2.detach())
            ema = value if ema is None else 0.9 * ema + 0.1 * value
        grads2 = torch.autograd.grad(loss2, params)
        with torch.no_grad():
            for p, s in zip(params, saved):
                p.copy_(s)
        sgd(params, grads2, buffers, lr=0.01)
        np.testing.assert_allclose(step(tta, x), logits.softmax(1).detach(), **TOL)
        for ours, theirs in zip(bn_affine(method.model), params):
            np.testing.assert_allclose(ours.detach(), theirs.detach(), **TOL)
        assert tta.ema == (None if ema is None else pytest.approx(ema, rel=1e-12))
    assert tta.counters["reliable_second"] > 0 and "resets" not in tta.counters
    # Recovery: an EMA below reset_em restores the trained model; the stale EMA stays (upstream's order).
    tta, method = adapted("sar", lr=0.01, reset_em=100.0)
    step(tta, batches(1)[0])
    assert tta.counters["resets"] == 1 and tta.ema is not None
    for ours, trained in zip(bn_affine(method.model), bn_affine(TinyMethod().model)):
        assert torch.equal(ours, trained)
    tta, _ = adapted("sar", lr=0.01, reset_em=100.0, clear_ema_on_reset=True)
    step(tta, batches(1)[0])
    assert tta.ema is None


def test_eata_weights_filters_and_fisher_anchor():
    e0 = 0.4 * math.log(C)

    class Split:  # the source validation images the Fisher is estimated on
        labels = np.zeros(20, dtype=np.int64)

        def __len__(self):
            return 20

    split, val_images = Split(), batches(1, size=20, seed=9)[0]
    method = TinyMethod()
    method.logits = lambda x, rows, data: logits_of(method.model, val_images[rows] if data is split else x)
    model = Adaptable(method, C)
    model.inputs = lambda data, rows: val_images[rows]
    x0 = batches(1)[0]
    model.find_head(x0, torch.arange(len(x0)), None)
    eata_cls = TTA_METHODS.get("eata")
    tta = eata_cls(options_from(eata_cls, {"lr": 0.05, "d_margin": 0.5, "fisher_alpha": 3.0, "fisher_batch": 8}),
                   model, split)
    tta.setup()
    tta.start()

    ref = batch_stat_copy(TinyMethod().model)
    params = bn_affine(ref)
    rows = np.random.default_rng(0).permutation(20)
    fisher = [torch.zeros_like(p) for p in params]
    chunks = [rows[i:i + 8] for i in range(0, 20, 8)]
    for chunk in chunks:
        out = logits_of(ref, val_images[torch.as_tensor(chunk)])
        grads = torch.autograd.grad(F.cross_entropy(out, out.argmax(1)), params)
        fisher = [f + g ** 2 for f, g in zip(fisher, grads)]
    fisher = [f / len(chunks) for f in fisher]
    anchor = [p.detach().clone() for p in params]
    for (ours, ours_anchor), theirs, a in zip(tta.fishers, fisher, anchor):
        np.testing.assert_allclose(ours, theirs, **TOL)
        np.testing.assert_allclose(ours_anchor, a, **TOL)

    buffers, mean_prob = {}, None
    for x in batches():
        logits = logits_of(ref, x)
        h = ent(logits)
        ids = torch.nonzero(h < e0).flatten()
        probs = logits[ids].softmax(1)
        if mean_prob is not None:
            keep = torch.nonzero(F.cosine_similarity(mean_prob[None], probs, dim=1).abs() < 0.5).flatten()
            ids, probs = ids[keep], probs[keep]
        if len(ids):
            mean_prob = probs.detach().mean(0) if mean_prob is None else 0.9 * mean_prob + 0.1 * probs.detach().mean(0)
            loss = (h[ids] * torch.exp(e0 - h[ids].detach())).mean()
            loss = loss + sum(3.0 * (f * (p - a) ** 2).sum() for f, p, a in zip(fisher, params, anchor))
            sgd(params, torch.autograd.grad(loss, params), buffers, lr=0.05)
        np.testing.assert_allclose(tta.step(x, torch.arange(len(x)), None), logits.softmax(1).detach(), **TOL)
        for ours, theirs in zip(tta.params, params):
            np.testing.assert_allclose(ours.detach(), theirs.detach(), **TOL)
    assert tta.counters["updates"] >= 1


def test_lame_reaches_its_fixed_point():
    tta, method = adapted("lame", knn=3)
    x = batches(1)[0]
    z = method.model["backbone"](x).detach()
    p = method.model["fc"](z).detach().softmax(1).numpy()
    f = (z / z.norm(dim=1, keepdim=True)).numpy()
    d = np.sqrt(((f[:, None] - f[None]) ** 2).sum(-1))
    a = np.zeros((len(f), len(f)))
    for i in range(len(f)):
        a[i, np.argsort(d[i], kind="stable")[1:4]] = 1.0  # the 3 nearest others
    unary = -np.log(p + 1e-10)
    y = np.exp(-unary) / np.exp(-unary).sum(1, keepdims=True)
    energies = []
    for i in range(100):
        pairwise = a @ y
        e = np.exp(-unary + pairwise - (-unary + pairwise).max(1, keepdims=True))
        y = e / e.sum(1, keepdims=True)
        energies.append((unary * y - pairwise * y + y * np.log(np.clip(y, 1e-20, None))).sum())
        if i > 1 and abs(energies[-1] - energies[-2]) <= 1e-8 * abs(energies[-2]):
            break
    np.testing.assert_allclose(step(tta, x), y, **TOL)


def test_shot_im_maximises_information_with_the_head_frozen():
    tta, method = adapted("shot_im")
    ref = TinyMethod().model  # eval mode: BatchNorm with its trained statistics
    params = list(ref["backbone"].parameters())
    state = {}
    for t, x in enumerate(batches(), start=1):
        logits = logits_of(ref, x)
        mean = logits.softmax(1).mean(0)
        loss = ent(logits).mean() + (mean * torch.log(mean + 1e-5)).sum()
        adam(params, torch.autograd.grad(loss, params), state, lr=1e-3, t=t)
        np.testing.assert_allclose(step(tta, x), logits.softmax(1).detach(), **TOL)
    for ours, theirs in zip(method.model["backbone"].parameters(), params):
        np.testing.assert_allclose(ours.detach(), theirs.detach(), **TOL)
    assert torch.equal(method.model["fc"].weight, TinyMethod().model["fc"].weight)


@pytest.mark.parametrize("name", ["tent", "sar", "eta", "shot_im", "t3a", "norm"])
def test_a_reset_restores_the_trained_model_bit_for_bit(name):
    tta, method = adapted(name, **({"lr": 0.05} if name in ("sar", "eta") else {}))
    for x in batches():
        step(tta, x)
    tta.reset()
    trained = TinyMethod().model.state_dict()
    for key, value in method.model.state_dict().items():
        assert torch.equal(value, trained[key]), key
    assert getattr(tta, "supports", None) is None and getattr(tta, "mean_prob", None) is None


def test_methods_that_cannot_adapt_a_model_say_why():
    def refusal(name, method, source_val=None, **options):
        model = Adaptable(method, C)
        x = batches(1)[0]
        model.find_head(x, torch.arange(len(x)), None)
        cls = TTA_METHODS.get(name)
        return cls.refuse(options_from(cls, options), model, source_val)

    no_bn = TinyMethod(norm="gn")
    assert "no BatchNorm" in refusal("norm", no_bn)
    assert "no bn norm layer" in refusal("tent", no_bn)
    assert refusal("tent", no_bn, norm_types="bn+ln+gn") is None  # GroupNorm adapts when asked
    cosine = TinyMethod(head="cosine")
    for name in ("t3a", "lame", "shot_im"):
        assert "not the output of one linear layer" in refusal(name, cosine), name
    assert refusal("tent", cosine) is None
    assert "validation split" in refusal("eata", TinyMethod())
    assert refusal("eta", TinyMethod()) is None


def test_options_are_typed_and_a_wrong_one_is_named():
    (spec,) = tta_specs(["tent"], {"tta.tent.lr": "2.5e-4", "tta.tent.optimizer": "sgd"})
    assert spec.options.lr == 2.5e-4 and spec.label == "tent(lr=0.00025,optimizer=sgd)"
    from benchmark.core.errors import BenchmarkError

    with pytest.raises(BenchmarkError, match=r"tta.tent.rho: no such option"):
        tta_specs(["tent"], {"tta.tent.rho": "1"})
    with pytest.raises(BenchmarkError, match=r"--set tta.sar.lr: not an option of a TTA method named in --tta"):
        tta_specs(["tent"], {"tta.sar.lr": "1"})
    for key, value, message in [("tta.tent.steps", "0", "tta.tent.steps = 0: at least 1"),
                                ("tta.tent.norm_types", "ln", r"tta.tent.norm_types = 'ln': expected one of bn, bn\+ln\+gn"),
                                ("tta.lame.affinity", "cos", "tta.lame.affinity = 'cos': expected one of knn"),
                                ("tta.norm.prior", "2", r"tta.norm.prior = 2.0: expected a weight in \[0, 1\]")]:
        with pytest.raises(BenchmarkError, match=message):  # before any model is loaded
            tta_specs([key.split(".")[1]], {key: value})
    with pytest.raises(Exception, match="unknown TTA method 'tnet'; did you mean 'tent'"):
        tta_specs(["tnet"], {})


def test_the_stream_orders_are_seeded_permutations():
    labels = np.repeat(np.arange(C), 30)
    iid = stream_order(labels, StreamSettings(), 3)
    assert sorted(iid) == list(range(len(labels))) and np.array_equal(iid, stream_order(labels, StreamSettings(), 3))
    assert not np.array_equal(iid, stream_order(labels, StreamSettings(), 4))
    order = dirichlet_order(labels, 0.1, np.random.default_rng(0))
    assert sorted(order) == list(range(len(labels)))
    runs = 1 + np.count_nonzero(np.diff(labels[order]))  # label changes along the stream
    shuffled_runs = 1 + np.count_nonzero(np.diff(labels[iid]))
    assert runs < shuffled_runs / 3  # long runs of one class: a label-correlated stream
    with pytest.raises(Exception, match="tta order = 'sorted'"):
        StreamSettings(order="sorted")


def test_a_method_without_a_trained_network_is_refused_not_an_error():
    from benchmark.tta.evaluation import adapt

    (spec,) = tta_specs(["tent"], {})
    probe = SimpleNamespace(name="clip_probe")  # a probe on cached features: no `logits`, no network
    outcome = adapt(probe, {}, spec, {"t": None}, StreamSettings(), 0)
    assert outcome.refused == "tent: method clip_probe has no trained network to adapt (only the shared loop's methods do)"


def test_a_protocols_tta_table_is_checked_when_it_loads():
    from benchmark.jobs.protocol import ProtocolError, load_protocol

    assert "tent" in load_protocol("synth5_tta").tta["methods"]
    with pytest.raises(ProtocolError, match=r"synth5_tta.toml: \[tta\] unknown key\(s\) batch \(known: methods, "):
        load_protocol("synth5_tta", {"tta.batch": "3"})


class TinySplit:
    """A decoded split as the stream reads it: uint8 images, labels."""

    def __init__(self, n: int, seed: int):
        rng = np.random.default_rng(seed)
        self.images = rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8)
        self.labels = rng.integers(0, C, n)

    def __len__(self):
        return len(self.labels)

    def read(self, rows):
        return self.images[rows]


class TinyTrained(TinyMethod):
    """TinyMethod in float32 with a trained method's state_dict / load_state_dict."""

    def __init__(self):
        super().__init__()
        self.model = self.model.float()

    def state_dict(self):
        return {"model": copy.deepcopy(self.model.state_dict())}

    def load_state_dict(self, state):
        self.model = TinyMethod().model.float()
        self.model.load_state_dict(state["model"])


def test_per_domain_starts_each_target_fresh_and_never_carries_the_adaptation_on():
    from benchmark.tta.evaluation import adapt

    method = TinyTrained()
    state = method.state_dict()
    (spec,) = tta_specs(["tent"], {"tta.tent.lr": "0.05"})
    a, b = TinySplit(40, 1), TinySplit(40, 2)
    stream = StreamSettings(batch_size=8)
    both = adapt(method, state, spec, {"a": a, "b": b}, stream, 0)
    alone = adapt(method, state, spec, {"b": b}, stream, 0)
    np.testing.assert_array_equal(both.targets["b"].stream.probs, alone.targets["b"].stream.probs)
    continual = adapt(method, state, spec, {"a": a, "b": b}, StreamSettings(batch_size=8, reset="never"), 0)
    np.testing.assert_array_equal(continual.targets["a"].stream.probs, both.targets["a"].stream.probs)
    assert np.abs(continual.targets["b"].stream.probs - alone.targets["b"].stream.probs).max() > 1e-4
    assert both.targets["b"].metrics["tta/updates"] == 5  # 40 images, batches of 8, one step each
