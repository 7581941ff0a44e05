"""Look-alike identities: what a machine id that is not plain ASCII renders as.

`payments-api` written with a Cyrillic a (U+0430), a Greek omicron, fullwidth letters, a
zero-width space or a right-to-left override looks like `payments-api` on a terminal and in
a dashboard, yet is another identity. `inspect` tells what such an id imitates and why it is
suspicious:

- **Look-alikes.** The ASCII spellings the id renders as. Two strings are confusable when
  their UTS #39 skeletons are equal (https://www.unicode.org/reports/tr39/#Confusable_Detection:
  NFD, each character mapped to its prototype, default-ignorable characters removed, NFD
  again); a candidate here is the id with each non-ASCII character replaced by an ASCII
  character of the same prototype, so skeleton(candidate) == skeleton(id). The caller looks
  the candidates up among the identities it knows: one point read each, and no second table
  of skeletons to keep bounded and shared.
- **Invisible characters**: default-ignorable code points (Unicode's
  DerivedCoreProperties.txt, Default_Ignorable_Code_Point: format characters such as
  U+200B ZERO WIDTH SPACE and the bidi controls, variation selectors, fillers). A
  right-to-left override (or embedding, or isolate) also reverses what follows it on screen,
  so the order as displayed is a candidate too.
- **Mixed scripts**: a label (a run of letters and digits) with letters of more than one
  script, unless they are Latin with the CJK scripts (UTS #39's Highly Restrictive level).

ASCII look-alikes of ASCII (`rn` and `m`, `1` and `l`, `0` and `O`) are not judged: names
that differ only so are common between legitimate replicas (ReplicaSet hashes mix r, n and
m), and only a non-ASCII id pays for any of this.

The character data is Unicode's confusables.txt and Scripts.txt as the `confusable-homoglyphs`
package ships them (its JSON files, read once on the first non-ASCII id; none of its code is
used). That file lists each confusable pair once in either direction; a prototype is the side
with many look-alikes, and in a pair of single look-alikes the ASCII side (see `_tables`).

Imports: the standard library only.
"""

from __future__ import annotations

import bisect
import itertools
import json
import unicodedata
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

# At most this many spellings are tried per id: characters with several ASCII look-alikes
# (Cyrillic palochka is l, 1, I and |) multiply them.
MAX_CANDIDATES = 16

_RTL_OPEN = frozenset("\u202b\u202e\u2067")  # RLE, RLO, RLI
_BIDI_CLOSE = frozenset("\u202c\u2069")  # PDF, PDI
# Default_Ignorable_Code_Point (DerivedCoreProperties.txt) beyond the format characters.
_IGNORABLE_EXTRA = frozenset("\u034f\u115f\u1160\u17b4\u17b5\u3164\uffa0")
_IGNORABLE_RANGES = ((0x180B, 0x180F), (0xFE00, 0xFE0F), (0xE0000, 0xE0FFF))
# Format characters that render (prepended concatenation marks, interlinear annotation).
_VISIBLE_FORMAT = frozenset(
    "\u0600\u0601\u0602\u0603\u0604\u0605\u06dd\u070f\u0890\u0891\u08e2"
    "\ufff9\ufffa\ufffb\U000110bd\U000110cd"
)
_CJK_WITH_LATIN = frozenset({"LATIN", "HAN", "HIRAGANA", "KATAKANA", "HANGUL", "BOPOMOFO"})
_NO_SCRIPT = frozenset({"COMMON", "INHERITED"})


def invisible(ch: str) -> bool:
    """Whether `ch` is a default-ignorable code point: it renders as nothing."""
    if ch in _IGNORABLE_EXTRA:
        return True
    if unicodedata.category(ch) == "Cf":
        return ch not in _VISIBLE_FORMAT
    cp = ord(ch)
    return any(lo <= cp <= hi for lo, hi in _IGNORABLE_RANGES)


def describe(ch: str, position: int) -> str:
    """`U+0430 CYRILLIC SMALL LETTER A at position 1` (positions count from 0)."""
    name = unicodedata.name(ch, "")
    return f"U+{ord(ch):04X}{' ' + name if name else ''} at position {position}"


def escaped(identity: str) -> str:
    """The id with every non-ASCII or unprintable character as <U+XXXX>: safe to print, and
    it shows what the plain rendering hides."""
    return "".join(
        ch if ch.isascii() and ch.isprintable() else f"<U+{ord(ch):04X}>" for ch in identity
    )


@dataclass(frozen=True, slots=True)
class Lookalike:
    """Why an id is suspicious. `candidates`: the ASCII spellings it renders as, to look up
    among known identities; `characters`: each character that differs from plain ASCII,
    described; `invisible`, `mixed`: described, or empty."""

    candidates: tuple[str, ...]
    characters: tuple[str, ...]
    invisible: tuple[str, ...]
    mixed: str


@dataclass(frozen=True, slots=True)
class _Tables:
    prototype: dict[str, str]
    ascii_of: dict[str, tuple[str, ...]]
    starts: list[int]
    ranges: list[tuple[int, int, str]]


def _read(name: str) -> object:
    return json.loads((resources.files("confusable_homoglyphs") / name).read_text("utf-8"))


@lru_cache(maxsize=1)
def _tables() -> _Tables:
    raw = _read("confusables.json")
    assert isinstance(raw, dict)
    graph: dict[str, set[str]] = {}
    for key, entries in raw.items():
        # The package wraps right-to-left characters in U+200E marks for display.
        a = key.replace("\u200e", "")
        for entry in entries:
            b = entry["c"].replace("\u200e", "")
            if a and b and a != b:
                graph.setdefault(a, set()).add(b)
                graph.setdefault(b, set()).add(a)
    # In confusables.txt every source has one target and no target is a source: a string
    # with one neighbour that has several is a source, one with several is a prototype.
    prototype: dict[str, str] = {}
    for x, near in graph.items():
        if len(near) != 1:
            continue
        (n,) = near
        if len(graph[n]) > 1:
            prototype[x] = n
        else:
            prototype[x] = min((x, n), key=lambda s: (not s.isascii(), s))
    ascii_of: dict[str, list[str]] = {}
    for x in itertools.chain((chr(c) for c in range(0x21, 0x7F)), graph):
        if x.isascii() and x.isprintable() and x not in ascii_of.get(prototype.get(x, x), ()):
            ascii_of.setdefault(prototype.get(x, x), []).append(x)
    scripts = _read("categories.json")
    assert isinstance(scripts, dict)
    aliases = scripts["iso_15924_aliases"]
    ranges = [(lo, hi, aliases[a]) for lo, hi, a, _ in scripts["code_points_ranges"]]
    return _Tables(
        prototype,
        {p: tuple(sorted(v, key=lambda s: (len(s), s))) for p, v in ascii_of.items()},
        [r[0] for r in ranges],
        ranges,
    )


def script(ch: str) -> str:
    """The Unicode script of `ch` (Scripts.txt alias: LATIN, CYRILLIC, COMMON...)."""
    t = _tables()
    cp = ord(ch)
    i = bisect.bisect_right(t.starts, cp) - 1
    if i >= 0 and t.ranges[i][0] <= cp <= t.ranges[i][1]:
        return t.ranges[i][2]
    return "UNKNOWN"


def _displayed(identity: str) -> str:
    """The id in the order it is displayed, as far as right-to-left overrides, embeddings
    and isolates reorder plain left-to-right text: each such run reversed."""
    out: list[str] = []
    run: list[str] | None = None
    for ch in identity:
        if ch in _RTL_OPEN:
            if run is not None:
                out.extend(reversed(run))
            run = []
        elif ch in _BIDI_CLOSE:
            if run is not None:
                out.extend(reversed(run))
                run = None
        elif run is not None:
            run.append(ch)
        else:
            out.append(ch)
    if run is not None:
        out.extend(reversed(run))
    return "".join(out)


def _spellings(text: str, t: _Tables) -> list[str]:
    """ASCII spellings of `text` (invisible characters already removed) with its skeleton."""
    choices: list[tuple[str, ...]] = []
    for ch in unicodedata.normalize("NFD", text):
        if ch.isascii():
            choices.append((ch,))
            continue
        proto = t.prototype.get(ch, ch)
        alts = t.ascii_of.get(proto)
        if alts is not None and len(alts) > 1:
            # The likeliest spelling first (fullwidth l is l, not 1 or I): the first
            # combination is then the one the id was most likely made from.
            like = unicodedata.normalize("NFKC", ch)
            alts = tuple(sorted(alts, key=lambda a: (a != like, a != proto)))
        if alts is None:
            # confusables.txt leaves out some compatibility forms (fullwidth b and n, say)
            # that NFKC folds into ASCII: they look the same all the same.
            like = unicodedata.normalize("NFKC", ch)
            if like.isascii() and like.isprintable() and like:
                proto = like
            # A mark on an ASCII letter (an accent) is not a look-alike of the bare letter.
            keep = unicodedata.combining(ch) or not proto.isascii()
            alts = (ch,) if keep else (proto,)
        choices.append(alts)
    out: list[str] = []
    for combo in itertools.product(*choices):
        out.append(unicodedata.normalize("NFC", "".join(combo)))
        if len(out) >= MAX_CANDIDATES:
            break
    return out


def _ascii_like(ch: str, t: _Tables) -> bool:
    if t.prototype.get(ch, ch) in t.ascii_of:
        return True
    like = unicodedata.normalize("NFKC", ch)
    return like.isascii() and like.isprintable() and bool(like)


def _mixed(identity: str) -> str:
    label: list[str] = []
    for ch in itertools.chain(identity, " "):
        if ch.isalnum() or (label and unicodedata.combining(ch)):
            label.append(ch)
            continue
        if label:
            scripts = {script(c) for c in label if c.isalpha()} - _NO_SCRIPT
            if len(scripts) > 1 and not scripts <= _CJK_WITH_LATIN:
                names = " and ".join(s.title() for s in sorted(scripts))
                return f"label '{escaped(''.join(label))}' mixes {names}"
            label = []
    return ""


def inspect(identity: str) -> Lookalike | None:
    """Why `identity` may imitate another, or None when it is plain printable ASCII (the
    fast path: one `isascii` for almost every id) or nothing about it is suspicious."""
    if identity.isascii():
        return None
    t = _tables()
    hidden = tuple(describe(ch, i) for i, ch in enumerate(identity) if invisible(ch))
    # As displayed first: that is the identity a reader takes it for.
    forms = ["".join(ch for ch in identity if not invisible(ch))]
    if any(ch in _RTL_OPEN for ch in identity):
        forms.insert(0, "".join(ch for ch in _displayed(identity) if not invisible(ch)))
    candidates: list[str] = []
    for form in forms:
        for c in _spellings(form, t):
            if c != identity and c not in candidates:
                candidates.append(c)
    characters = tuple(
        describe(ch, i)
        for i, ch in enumerate(identity)
        if not ch.isascii() and (invisible(ch) or _ascii_like(ch, t))
    )
    mixed = _mixed(identity)
    if not (hidden or mixed or characters):
        return None
    return Lookalike(tuple(candidates[:MAX_CANDIDATES]), characters, hidden, mixed)
