"""t3a: test-time template adjustment (Iwasawa & Matsuo, NeurIPS 2021; matsuolab/T3A
domainbed/adapt_algorithms.py). No weight changes: the final linear layer's class vectors are
replaced by prototypes of the test features seen so far.

Supports start as the head's weight rows, each labelled by the head's own argmax and entropy.
Each batch's features join them, labelled by the head's argmax (the original head's, never T3A's
adjusted one); per class the `filter_k` supports of lowest entropy are kept; the class template is
the normalised sum of its normalised supports, and the batch's logits are its raw features dotted
with the templates (no bias): predicted after the batch joined the supports.

`filter_k = -1` keeps every support (upstream meant "all", but its slice [:-1] drops each class's
highest-entropy support; this keeps them). Default 100 (TTAB's). The network stays in eval mode.
For CAFE the features are the masked CLIP features F * sigmoid(M), the input of its linear layer.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.nn import functional as F

from ..base import Adaptable, TTAMethod, entropy, full_precision, register_tta


@dataclass(frozen=True)
class T3AOptions:
    filter_k: int = 100  # supports kept per class; -1 keeps all


@register_tta("t3a")
class T3A(TTAMethod):
    description = "class prototypes of the test features replace the linear head (no weight changes)"
    Options = T3AOptions

    @classmethod
    def check(cls, options) -> str | None:
        if options.filter_k == 0 or options.filter_k < -1:
            return f"filter_k = {options.filter_k}: a positive count, or -1 for all"
        return None

    @classmethod
    def refuse(cls, options, model: Adaptable, source_val) -> str | None:
        if model.head is None:
            return "its logits are not the output of one linear layer (no class vectors to replace)"
        return None

    def setup(self) -> None:
        self.supports = None

    def clear_memory(self) -> None:
        self.supports = None

    def _warm_up(self, head: torch.nn.Linear) -> None:
        w = full_precision(head.weight.detach())
        q = F.linear(w, w, None if head.bias is None else full_precision(head.bias.detach()))
        self.supports = w.clone()
        self.labels = F.one_hot(q.argmax(1), w.shape[0]).to(w.dtype)
        self.ent = entropy(q)

    @torch.no_grad()
    def step(self, x, rows, data) -> torch.Tensor:
        logits, z = self.model.logits_and_features(x, rows, data)
        if self.supports is None:
            self._warm_up(self.model.head)
        self.supports = torch.cat([self.supports, z])
        self.labels = torch.cat([self.labels, F.one_hot(logits.argmax(1), self.labels.shape[1]).to(z.dtype)])
        self.ent = torch.cat([self.ent, entropy(logits)])
        self._prune()
        weights = F.normalize(self.supports, dim=1).T @ self.labels  # (d, C): sum of normalised supports per class
        out = z @ F.normalize(weights, dim=0)
        self.count(forwards=1)
        self.counters["supports"] = float(len(self.supports))  # at the end of the target
        return out.softmax(1)

    def _prune(self) -> None:
        k = self.options.filter_k
        if k == -1:
            return
        y = self.labels.argmax(1)
        keep = []
        for c in range(self.labels.shape[1]):
            members = torch.nonzero(y == c).flatten()
            order = torch.argsort(self.ent[members], stable=True)
            keep.append(members[order][:k])
        keep = torch.cat(keep)  # class by class, as upstream concatenates them
        self.supports, self.labels, self.ent = self.supports[keep], self.labels[keep], self.ent[keep]
