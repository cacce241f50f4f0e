"""Byte-level fuzzing of a model reader, shared by the reader tests."""

from __future__ import annotations

import numpy as np


def fuzz_reader(good: bytes, read, *, seed: int, head: int = 0, span: int | None = None, trials: int = 300,
                name: str = "x.pte") -> dict:
    """Feed ``read`` ``trials`` damaged copies of ``good`` (every third one cut short, then 1-5 random bytes
    changed in ``[head, span)``); each must read or raise ModelFormatError naming ``name``.
    Returns {"read": n, "refused": n}."""
    from workbench.core.errors import ModelFormatError

    rng = np.random.default_rng(seed)
    outcomes = {"read": 0, "refused": 0}
    for trial in range(trials):
        data = bytearray(good[: int(rng.integers(head, len(good)))] if trial % 3 == 0 else good)
        for _ in range(int(rng.integers(1, 6))):
            end = len(data) if span is None else min(len(data), span)
            if end > head:
                data[int(rng.integers(head, end))] = int(rng.integers(0, 256))
        try:
            read(bytes(data))
            outcomes["read"] += 1
        except ModelFormatError as exc:
            assert name in exc.message
            outcomes["refused"] += 1
    return outcomes
