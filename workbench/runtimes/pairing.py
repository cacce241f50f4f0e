"""Which output of one model is which output of another.

A converter may reorder a model's outputs (a .tflite's subgraph lists them in its own order; a
SavedModel's signature sorts its keys) but it keeps their names: signature keys (``output_0``, a
Keras layer's name, a SavedModel key) and tensor names, which each runner gives in
:meth:`~workbench.runtimes.base.Runner.output_names`. Outputs are paired by those names; only
when the names do not pair up one to one are they paired by position, with a note saying so.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from workbench.core.errors import ConfigError, DataError


@dataclass(frozen=True)
class OutputPair:
    """One reference output and the candidate output it is compared with."""

    ref_index: int
    cand_index: int
    ref_names: tuple[str, ...]
    cand_names: tuple[str, ...]

    @property
    def name(self) -> str:
        return self.ref_names[0]

    @property
    def candidate_name(self) -> str:
        return self.cand_names[0]

    def known_as(self, name: str) -> bool:
        return name in self.ref_names or name in self.cand_names


def _names(names: tuple[tuple[str, ...], ...], count: int) -> list[tuple[str, ...]]:
    """One non-empty name tuple per produced output (a runner may produce more than its specs name)."""
    out = [tuple(n) or (f"output_{i}",) for i, n in enumerate(names[:count])]
    return out + [(f"output_{i}",) for i in range(len(out), count)]


def pair_outputs(ref_names, cand_names, n_ref: int, n_cand: int) -> tuple[list[OutputPair], str, list[str]]:
    """(pairs in reference order, how they were paired: "single", "name" or "position", warnings)."""
    r, c = _names(tuple(ref_names), n_ref), _names(tuple(cand_names), n_cand)
    if n_ref == 1 and n_cand == 1:
        return [OutputPair(0, 0, r[0], c[0])], "single", []
    matches = [[j for j in range(n_cand) if set(r[i]) & set(c[j])] for i in range(n_ref)]
    used = [j for m in matches for j in m]
    pairs = [OutputPair(i, m[0], r[i], c[m[0]]) for i, m in enumerate(matches) if len(m) == 1]
    notes = []
    if all(len(m) <= 1 for m in matches) and len(used) == len(set(used)) and len(pairs) == min(n_ref, n_cand):
        how = "name"
    else:
        how = "position"
        pairs = [OutputPair(i, i, r[i], c[i]) for i in range(min(n_ref, n_cand))]
        notes.append(f"The output names do not pair up (reference: {', '.join(n[0] for n in r)}; candidate: "
                     f"{', '.join(n[0] for n in c)}): outputs are compared by position, and a converter may have "
                     "reordered them. Check each output's numbers.")
    if n_ref != n_cand:
        left = [n[0] for i, n in enumerate(r) if i not in {p.ref_index for p in pairs}]
        left += [n[0] for j, n in enumerate(c) if j not in {p.cand_index for p in pairs}]
        notes.append(f"The reference gives {n_ref} output(s) and the candidate {n_cand} (its runtime may fetch only the "
                     f"first): only {len(pairs)} compared; not compared: {', '.join(left)}.")
    return pairs, how, notes


def select(pairs: list[OutputPair], output: str | None) -> OutputPair:
    """The pair named ``output`` (any name either side gives it, or its position), the first when None."""
    if output in (None, ""):
        return pairs[0]
    for p in pairs:
        if p.known_as(output):
            return p
    if output.isdigit() and int(output) < len(pairs):
        return next((p for p in pairs if p.ref_index == int(output)), pairs[int(output)])
    shown = "; ".join(p.name + (f" (also {', '.join(n for n in dict.fromkeys(p.ref_names[1:] + p.cand_names) if n != p.name)})"
                                if len(set(p.ref_names + p.cand_names)) > 1 else "") for p in pairs)
    raise ConfigError(f"No output is named '{output}'. The outputs compared: {shown}.",
                      hint="Pass one of those names (or the output's position, 0 first) to --output.")


def check_shapes(pairs: list[OutputPair], ys_ref: list[np.ndarray], ys_cand: list[np.ndarray], ref_label: str,
                 cand_label: str, how: str) -> None:
    for p in pairs:
        a, b = ys_ref[p.ref_index].shape[1:], ys_cand[p.cand_index].shape[1:]
        if a != b:
            why = " (outputs paired by position: their names do not match)" if how == "position" else ""
            raise DataError(f"The two models give outputs of different shapes{why}: {ref_label} output '{p.name}' {a}, "
                            f"{cand_label} output '{p.candidate_name}' {b}.",
                            hint="Compare models that compute the same function.")
