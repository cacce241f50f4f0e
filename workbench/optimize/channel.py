"""Structured (channel) pruning plans, independent of the framework.

A framework module walks its model graph once and describes every tensor's channel axis to a
:class:`ChannelGraph`:

* ``source``: a layer that creates channels (regular convolution, dense/linear): its output
  filters may be removed;
* ``same``: the output has the input's channels (batch norm, activations, pooling, mean,
  dropout, depthwise convolution, whose groups follow their input channels);
* ``merge``: an element-wise add/multiply: both sides must keep the *same* channel set, so
  their channel spaces are unified (residual connections);
* ``flatten``: channels spread over ``spatial`` features, channel-major (NCHW) or
  channel-minor (NHWC);
* ``consume``: a layer that reads channels (the input side of a convolution or dense layer);
* ``input``/``output``/``pin``: channel spaces that must keep every channel.

The unified spaces form groups; each group not pinned keeps the ``round(C * (1 - sparsity))``
most important channels (at least one), ranked by the filters' L1 norms (summed over the
group's producers, each normalised by its mean) or by the absolute batch-norm gammas. The
resulting :class:`ChannelPlan` tells the framework which output, pass-through and input
indices every layer keeps.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Hashable

import numpy as np

from workbench.core.errors import UnsupportedError


@dataclass(frozen=True)
class ChannelPlan:
    out_keep: dict[str, np.ndarray] = field(default_factory=dict)   # producers: output channels kept
    same_keep: dict[str, np.ndarray] = field(default_factory=dict)  # batch norm, depthwise: channels kept
    in_keep: dict[str, np.ndarray] = field(default_factory=dict)    # consumers: input features kept
    groups: tuple[dict, ...] = ()

    @property
    def changed(self) -> bool:
        return any(g.get("pruned") for g in self.groups)


class ChannelGraph:
    def __init__(self, where: str = "the model"):
        self.where = where
        self._parent: list[int] = []
        self._size: list[int] = []
        self._pins: dict[int, list[str]] = {}
        self._values: dict[Hashable, tuple] = {}
        self._sources: list[tuple[str, int]] = []
        self._members: list[tuple[str, int, str]] = []  # (layer, space, role)
        self._consumers: list[tuple[str, tuple]] = []

    # --- spaces
    def _new(self, channels: int) -> int:
        self._parent.append(len(self._parent))
        self._size.append(int(channels))
        return len(self._parent) - 1

    def _find(self, s: int) -> int:
        while self._parent[s] != s:
            self._parent[s] = self._parent[self._parent[s]]
            s = self._parent[s]
        return s

    def _union(self, a: int, b: int, layer: str) -> int:
        ra, rb = self._find(a), self._find(b)
        if ra == rb:
            return ra
        if self._size[ra] != self._size[rb]:
            raise UnsupportedError(f"Layer '{layer}' in {self.where} combines tensors with {self._size[ra]} and "
                                   f"{self._size[rb]} channels; channel pruning needs equal channel counts there.")
        self._parent[rb] = ra
        self._pins.setdefault(ra, []).extend(self._pins.pop(rb, []))
        return ra

    def _value(self, key: Hashable, layer: str) -> tuple:
        try:
            return self._values[key]
        except KeyError:
            raise UnsupportedError(f"Layer '{layer}' in {self.where} reads a tensor whose channels could not be "
                                   "followed.") from None

    # --- graph description
    def input(self, value: Hashable, channels: int, name: str = "input") -> None:
        s = self._new(channels)
        self._pins[s] = [f"model input '{name}'"]
        self._values[value] = ("space", s)

    def source(self, value: Hashable, layer: str, channels: int) -> None:
        s = self._new(channels)
        self._sources.append((layer, s))
        self._values[value] = ("space", s)

    def same(self, out: Hashable, inp: Hashable, layer: str, role: str | None = None, pin: str | None = None) -> None:
        v = self._value(inp, layer)
        if role is not None:
            if v[0] != "space":
                raise UnsupportedError(f"Layer '{layer}' in {self.where} follows a flatten; channel pruning cannot slice it.")
            self._members.append((layer, v[1], role))
        if pin is not None:
            self._pins.setdefault(self._find(v[1]), []).append(pin)
        self._values[out] = v

    def merge(self, out: Hashable, inputs: list[Hashable], layer: str) -> None:
        vals = [self._value(i, layer) for i in inputs]
        if any(v[0] != "space" for v in vals):
            raise UnsupportedError(f"Layer '{layer}' in {self.where} combines flattened tensors; channel pruning "
                                   "cannot follow its channels.")
        s = vals[0][1]
        for v in vals[1:]:
            s = self._union(s, v[1], layer)
        self._values[out] = ("space", self._find(s))

    def flatten(self, out: Hashable, inp: Hashable, layer: str, spatial: int, channels_last: bool) -> None:
        v = self._value(inp, layer)
        if v[0] != "space":
            raise UnsupportedError(f"Layer '{layer}' in {self.where} flattens an already flat tensor.")
        self._values[out] = ("flat", v[1], int(spatial), bool(channels_last))

    def consume(self, inp: Hashable, layer: str) -> None:
        self._consumers.append((layer, self._value(inp, layer)))

    def output(self, value: Hashable, name: str = "output") -> None:
        v = self._value(value, name)
        self._pins.setdefault(self._find(v[1]), []).append(f"model output '{name}'")

    def pin(self, value: Hashable, reason: str) -> None:
        v = self._value(value, reason)
        self._pins.setdefault(self._find(v[1]), []).append(reason)

    # --- planning
    def plan(self, sparsity: float, l1: dict[str, np.ndarray], gamma: dict[str, np.ndarray] | None = None,
             criterion: str = "l1", round_to: int = 1) -> ChannelPlan:
        """Which channels each group keeps: ``round(C * (1 - sparsity))`` of them, rounded up to a multiple of
        ``round_to`` (never more than C), by the criterion's score."""
        gamma = gamma or {}
        groups: dict[int, dict] = {}
        for layer, s in self._sources:
            groups.setdefault(self._find(s), {"sources": [], "members": []})["sources"].append(layer)
        for layer, s, role in self._members:
            groups.setdefault(self._find(s), {"sources": [], "members": []})["members"].append((layer, role))
        keep: dict[int, np.ndarray] = {}
        report = []
        for root in sorted(groups):
            g = groups[root]
            c = self._size[root]
            pins = self._pins.get(root, [])
            entry = {"layers": g["sources"] + [m for m, _ in g["members"]], "channels": c}
            if pins or not g["sources"]:
                entry.update({"kept": c, "pruned": False, "reason": "; ".join(sorted(set(pins))) or "no producer"})
                report.append(entry)
                continue
            used = criterion
            bns = [m for m, role in g["members"] if role == "bn" and m in gamma]
            if criterion == "bn-gamma" and bns:
                score = sum(_normalised(np.abs(gamma[m])) for m in bns)
            else:
                used = "l1"
                score = sum(_normalised(l1[s]) for s in g["sources"])
            n_keep = max(1, int(round(c * (1.0 - sparsity))))
            n_keep = min(c, -(-n_keep // round_to) * round_to)
            order = np.argsort(-np.asarray(score, dtype=np.float64), kind="stable")
            keep[root] = np.sort(order[:n_keep])
            entry.update({"kept": int(n_keep), "pruned": n_keep < c, "criterion": used})
            report.append(entry)
        out_keep, same_keep, in_keep = {}, {}, {}
        for layer, s in self._sources:
            r = self._find(s)
            if r in keep:
                out_keep[layer] = keep[r]
        for layer, s, _ in self._members:
            r = self._find(s)
            if r in keep:
                same_keep[layer] = keep[r]
        for layer, v in self._consumers:
            r = self._find(v[1])
            if r not in keep:
                continue
            k = keep[r]
            if v[0] == "flat":
                _, _, spatial, channels_last = v
                c = self._size[r]
                if channels_last:
                    idx = (np.arange(spatial)[:, None] * c + k[None, :]).ravel()
                else:
                    idx = (k[:, None] * spatial + np.arange(spatial)[None, :]).ravel()
                in_keep[layer] = np.sort(idx)
            else:
                in_keep[layer] = k
        return ChannelPlan(out_keep=out_keep, same_keep=same_keep, in_keep=in_keep, groups=tuple(report))


def _normalised(v: np.ndarray) -> np.ndarray:
    v = np.asarray(v, dtype=np.float64)
    m = float(np.mean(v))
    return v / m if m > 0 else v


def refuse(layer: str, what: str, where: str, supported: str) -> UnsupportedError:
    return UnsupportedError(
        f"Channel pruning cannot handle layer '{layer}' ({what}) in {where}.",
        hint=f"Supported here: {supported}. Use --method magnitude for this model, or replace that layer.")
