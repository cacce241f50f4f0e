"""Reading the YAML files users hand us (recipes, target profiles, data specs), safely.

``yaml.safe_load`` never runs code, but it does expand aliases: a 480-byte "billion laughs"
file (anchors of anchors) describes a document of 10^9 nodes. The loader itself builds it with
shared references, so it returns quickly, but anything that walks the result (validation,
hashing, JSON) then runs for ever. Here the composed node graph is measured first, in time
linear in the file, and a document that expands beyond :data:`MAX_NODES` is refused before it
is built. Non-UTF-8 files and files over :data:`MAX_BYTES` are refused with the file named.
"""

from __future__ import annotations

from pathlib import Path

from workbench.core.errors import ConfigError

MAX_BYTES = 1 << 20  # a recipe or a target profile is a few KB
MAX_NODES = 20_000  # nodes of the document with every alias expanded


def expanded_nodes(node) -> int:
    """How many nodes ``node`` stands for once every alias is expanded (aliases share node objects)."""
    import yaml

    memo: dict[int, int] = {}
    order: list = []
    stack = [node]
    while stack:  # post-order without recursion: a deep document must not overflow Python's stack
        n = stack.pop()
        if id(n) in memo:
            continue
        memo[id(n)] = -1
        order.append(n)
        if isinstance(n, yaml.SequenceNode):
            stack.extend(n.value)
        elif isinstance(n, yaml.MappingNode):
            for k, v in n.value:
                stack.extend((k, v))
    for n in reversed(order):
        if isinstance(n, yaml.SequenceNode):
            kids = n.value
        elif isinstance(n, yaml.MappingNode):
            kids = [x for kv in n.value for x in kv]
        else:
            kids = []
        memo[id(n)] = min(1 + sum(memo[id(k)] for k in kids), 1 << 62)
    return memo[id(node)]


def read_yaml(path: str | Path, what: str, *, error=ConfigError):
    """``(document, node)`` of a YAML file; ``node`` is the composed graph (line numbers for messages).

    Raises ``error`` (a WorkbenchError class) naming the file for non-UTF-8 text, a syntax error,
    an oversized file or aliases that expand beyond :data:`MAX_NODES`.
    """
    import yaml

    p = Path(path)
    size = p.stat().st_size
    if size > MAX_BYTES:
        raise error(f"{what.capitalize()} '{p}' is {size:,} bytes; a {what} is expected to be at most {MAX_BYTES:,}.",
                    hint="Check that this is the right file.")
    raw = p.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise error(f"{what.capitalize()} '{p}' is not UTF-8 text (byte 0x{raw[exc.start]:02x} on line {line}).",
                    hint="Save the file as UTF-8.") from None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise error(f"{what.capitalize()} '{p}' is not valid YAML{at}: {getattr(exc, 'problem', None) or exc}.",
                    hint="Fix the syntax.") from None
    if node is None:
        return None, None
    n = expanded_nodes(node)
    if n > MAX_NODES:
        raise error(f"{what.capitalize()} '{p}' expands to {n:,} YAML nodes through its anchors and aliases "
                    f"(at most {MAX_NODES:,} are accepted).",
                    hint="Aliases that nest other aliases multiply (a 'billion laughs' file): write the values out instead.")
    loader = yaml.SafeLoader(text)
    try:
        return loader.construct_document(node), node
    except yaml.YAMLError as exc:
        raise error(f"{what.capitalize()} '{p}' is not valid YAML: {exc}.", hint="Fix the syntax.") from None
    finally:
        loader.dispose()
