"""Safe names and text for generated C and C++ sources.

Everything that comes from outside (a file name, a tensor name, a label, model metadata)
reaches a generated source only through one of these functions:

* :func:`c_identifier` turns any text into a valid C and C++ identifier, or ``""``;
* :func:`comment_text` gives text that is inert inside ``//`` and ``/* */`` comments,
  Markdown and ``key=value`` files (no ``*/``, ``/*``, backslash, ``?``, backtick or
  line break can survive: they are percent-encoded);
* :func:`c_string` gives a C/C++ string literal whose content can only be data.
"""

from __future__ import annotations

import re
import unicodedata

# C11/C23 and C++20 keywords and alternative tokens, plus names a compiler or the
# standard library reserves in practice. A model name equal to one of them is suffixed.
C_KEYWORDS = frozenset("""
auto break case char const continue default do double else enum extern float for goto if inline int long
register restrict return short signed sizeof static struct switch typedef union unsigned void volatile while
_Alignas _Alignof _Atomic _Bool _Complex _Generic _Imaginary _Noreturn _Static_assert _Thread_local
alignas alignof bool constexpr false nullptr static_assert thread_local true typeof typeof_unqual
""".split())

CPP_KEYWORDS = frozenset("""
and and_eq asm bitand bitor catch char8_t char16_t char32_t class compl concept consteval constinit
const_cast co_await co_return co_yield decltype delete dynamic_cast explicit export final friend import
module mutable namespace new noexcept not not_eq operator or or_eq override private protected public
reinterpret_cast requires static_cast template this throw try typeid typename using virtual wchar_t xor xor_eq
""".split())

RESERVED_NAMES = frozenset({"main", "std", "tflite", "flatbuffers", "NULL", "errno", "assert", "offsetof",
                            "setup", "loop", "int8_t", "uint8_t", "int16_t", "int32_t", "size_t"})

KEYWORDS = C_KEYWORDS | CPP_KEYWORDS | RESERVED_NAMES

MAX_IDENTIFIER = 48
_INVALID = re.compile(r"[^A-Za-z0-9_]+")


def c_identifier(text: str, max_len: int = MAX_IDENTIFIER) -> str:
    """A valid, non-reserved C/C++ identifier made from ``text``; ``""`` when nothing usable is left.

    Accents are dropped (``modèle`` -> ``modele``), every other character outside
    ``[A-Za-z0-9_]`` becomes ``_``, runs of ``_`` collapse to one (so no ``__`` reserved
    names), leading and trailing ``_`` go, a leading digit gets an ``m`` prefix and a
    keyword gets a ``_model`` suffix.
    """
    ascii_text = unicodedata.normalize("NFKD", str(text)).encode("ascii", "ignore").decode("ascii")
    name = _INVALID.sub("_", ascii_text)
    name = re.sub(r"_+", "_", name).strip("_")
    if not name or not re.search(r"[A-Za-z0-9]", name):
        return ""
    if name[0].isdigit():
        name = "m" + name
    name = name[:max_len].rstrip("_")
    if name in KEYWORDS:
        name = f"{name}_model"
    return name


def is_c_identifier(text: str) -> bool:
    return bool(re.fullmatch(r"[A-Za-z][A-Za-z0-9]*(_[A-Za-z0-9]+)*", text)) and text not in KEYWORDS


# Characters that are inert in comments, Markdown code spans and key=value lines.
_COMMENT_SAFE = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789 _.,:;=+-()[]{}@#&!^~'")


def comment_text(text: str, max_len: int = 120) -> str:
    """``text`` with every character outside a small safe set percent-encoded (UTF-8 bytes as ``%XX``).

    The result never contains ``*``, ``/``, ``\\``, ``?``, a backtick, ``<``, ``>``,
    ``"``, ``%`` (except as the escape itself) or a control character, so it cannot end
    a comment, continue a line, form a trigraph or inject Markdown/HTML.
    """
    pieces = [ch if ch in _COMMENT_SAFE else "".join(f"%{b:02X}" for b in ch.encode("utf-8", "surrogatepass"))
              for ch in str(text)]
    if sum(map(len, pieces)) <= max_len:
        return "".join(pieces)
    out, used = [], 0
    for piece in pieces:  # cut between characters, never inside an escape
        if used + len(piece) > max_len - 3:
            break
        out.append(piece)
        used += len(piece)
    return "".join(out) + "..."


# Printable ASCII that needs no escape in a C string literal. Excluded: '"' and '\\'
# (syntax), '?' (trigraphs in C11) and everything non-printable.
_STRING_SAFE = frozenset(chr(c) for c in range(0x20, 0x7F)) - {'"', "\\", "?"}


def c_string(text: str) -> str:
    """A C/C++ string literal holding ``text`` as UTF-8; unsafe bytes become 3-digit octal escapes."""
    out = ['"']
    for b in str(text).encode("utf-8", "surrogatepass"):
        ch = chr(b)
        out.append(ch if ch in _STRING_SAFE else f"\\{b:03o}")
    out.append('"')
    return "".join(out)
