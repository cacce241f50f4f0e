"""Budgets: ``--fail-on 'accuracy_drop_pp>1.0'`` turns a run into a CI gate (exit 1 when broken).

An expression is ``METRIC OP NUMBER`` with OP one of > >= < <= == !=; METRIC is a column
of the run's results (accuracy, accuracy_drop_pp, bytes, flash_bytes, ram_bytes, arena_bytes,
latency_ms, sqnr_db ...). A result that lacks the metric is not judged by that budget.
"""

from __future__ import annotations

import operator
import re
from dataclasses import dataclass

from workbench.core.errors import ConfigError

# Old result keys and their new names: a budget on an old key is refused naming the new one (no silent alias).
RENAMED = {"accuracy_drop": "accuracy_drop_pp"}
OPS = {">=": operator.ge, "<=": operator.le, "==": operator.eq, "!=": operator.ne, ">": operator.gt, "<": operator.lt}
_EXPR = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(>=|<=|==|!=|>|<)\s*(-?[0-9]+(?:\.[0-9]*)?(?:[eE][-+]?[0-9]+)?)\s*$")


@dataclass(frozen=True)
class Budget:
    text: str
    metric: str
    op: str
    value: float

    def broken_by(self, row: dict) -> bool:
        v = row.get(self.metric)
        if v is None or isinstance(v, (str, bool)):
            return False
        return OPS[self.op](float(v), self.value)


def parse_budget(text: str) -> Budget:
    m = _EXPR.match(text)
    if not m:
        raise ConfigError(f"Budget '{text}' does not parse.",
                          hint="Write METRIC OP NUMBER, e.g. 'accuracy_drop_pp>1.0', 'arena_bytes>200000', 'latency_ms>=50'.")
    if m.group(1) in RENAMED:
        new = RENAMED[m.group(1)]
        raise ConfigError(f"Budget '{text}': the key '{m.group(1)}' was renamed to '{new}' (units in the name: percentage points).",
                          hint=f"Write '{text.strip().replace(m.group(1), new, 1)}'.")
    return Budget(text=text.strip(), metric=m.group(1), op=m.group(2), value=float(m.group(3)))


def check(rows: list[dict], budgets: list[Budget]) -> list[dict]:
    """The (row, budget) pairs where a result breaks a budget."""
    out = []
    for row in rows:
        for b in budgets:
            if b.broken_by(row):
                out.append({"variant": row.get("variant"), "model": row.get("model"), "target": row.get("target"),
                            "budget": b.text, "value": row.get(b.metric)})
    return out
