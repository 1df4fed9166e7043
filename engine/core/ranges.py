"""SemVer precedence and npm's version ranges, exactly as npm's own ``semver`` reads them.

Pure. Shared by the spec check (``engine.spec_checks``, which says whether a sub-workflow
reference's range is one) and the orchestrator's registry (``orchestrator.versions``, which
resolves it), so that a range is refused or read the same way wherever it is given.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Final, TypeAlias

from engine.core.spec import MAX_VERSION_LENGTH, SEMVER

Precedence: TypeAlias = tuple[Any, ...]


def _key(major: str, minor: str, patch: str, prerelease: str | None) -> Precedence:
    """SemVer 2.0.0's precedence as a tuple: numeric identifiers below alphanumeric ones, a
    release (``(1,)``) above its pre-releases (``(0, ...)``), a shorter list of identifiers
    below a longer one it starts."""
    if prerelease is None:
        return (int(major), int(minor), int(patch), (1,))
    ids = tuple((0, int(i)) if i.isdigit() else (1, i) for i in prerelease.split("."))
    return (int(major), int(minor), int(patch), (0, *ids))


@lru_cache(maxsize=4096)
def precedence(version: str) -> Precedence:
    """Raises ValueError when ``version`` is not SemVer. Build metadata carries no precedence."""
    if len(version) > MAX_VERSION_LENGTH:
        raise ValueError(f"longer than {MAX_VERSION_LENGTH} characters")
    found = SEMVER.fullmatch(version)
    if found is None:
        raise ValueError(f"{version!r} is not a SemVer version")
    return _key(*found.group(1, 2, 3, 4))


def is_prerelease(key: Precedence) -> bool:
    return bool(key[3][0] == 0)


# -- npm's ranges ----------------------------------------------------------------------------
# node-semver 7.8.6 (github.com/npm/node-semver: classes/range.js, classes/comparator.js,
# internal/re.js), strict mode, includePrerelease off: ranges are desugared into comparator
# sets joined by ||, by the same rewriting of the text in the same order, so that what npm
# accepts, refuses and matches, this does too (tests/unit/npm_ranges.json, made by npm, says
# so). Whitespace is first collapsed to single spaces, as npm does, so its `\s*` and `\s+`
# (bounded to one in its safe regexes) are ` ?` and ` ` here.

_JS_SPACE: Final = re.compile(
    "[\t\n\v\f\r \u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000\ufeff]+"
)
_NUM: Final = r"(?:0|[1-9]\d*)"
_PRE_ID: Final = rf"(?:\d*[a-zA-Z-][a-zA-Z0-9-]*|{_NUM})"
_PRE: Final = rf"(?:-({_PRE_ID}(?:\.{_PRE_ID})*))"
_BUILD: Final = r"(?:\+([a-zA-Z0-9-]+(?:\.[a-zA-Z0-9-]+)*))"
_X_ID: Final = rf"{_NUM}|x|X|\*"
# a partial version: 1, 1.2, 1.x, 1.2.3-pre+build; groups: major, minor, patch, pre, build
_X_PLAIN: Final = rf"[v= ]*({_X_ID})(?:\.({_X_ID})(?:\.({_X_ID})(?:{_PRE})?{_BUILD}?)?)?"
_PRE_ID_LOOSE: Final = r"(?:\d*[a-zA-Z-][a-zA-Z0-9-]*|\d+)"
_PRE_LOOSE: Final = rf"(?:-?({_PRE_ID_LOOSE}(?:\.{_PRE_ID_LOOSE})*))"
_LOOSE_PLAIN: Final = rf"[v= ]*\d+\.\d+\.\d+{_PRE_LOOSE}?{_BUILD}?"
_GTLT: Final = r"((?:<|>)?=?)"

_BUILD_ANYWHERE: Final = re.compile(_BUILD)
_HYPHEN: Final = re.compile(rf" ?({_X_PLAIN}) - ({_X_PLAIN}) ?")
_COMPARATOR_TRIM: Final = re.compile(rf"( ?){_GTLT} ?({_LOOSE_PLAIN}|{_X_PLAIN})")
_TILDE_TRIM: Final = re.compile(r"( ?)~>? ")
_CARET_TRIM: Final = re.compile(r"( ?)\^ ")
_TILDE: Final = re.compile(rf"~>?{_X_PLAIN}")
_CARET: Final = re.compile(rf"\^{_X_PLAIN}")
_X_RANGE: Final = re.compile(rf"{_GTLT} ?{_X_PLAIN}")
_STAR: Final = re.compile(r"(<|>)?=? ?\*")
_GTE0: Final = re.compile(r" ?>= ?0\.0\.0 ?")
_COMPARATOR: Final = re.compile(rf"{_GTLT} ?(v?({_NUM})\.({_NUM})\.({_NUM}){_PRE}?{_BUILD}?)")
_MAX_NUMBER: Final = 2**53 - 1  # JavaScript's Number.MAX_SAFE_INTEGER, npm's largest


def _is_x(part: str | None) -> bool:
    return not part or part in ("x", "X", "*")


def _plus1(number: str) -> str:
    return str(int(number) + 1)


def _hyphen(found: re.Match[str]) -> str:
    """``1.2 - 3.4.5`` -> ``>=1.2.0 <=3.4.5`` (range.js ``hyphenReplace``)."""
    low, low_major, low_minor, low_patch = found.group(1, 2, 3, 4)
    high, high_major, high_minor, high_patch, high_pre = found.group(7, 8, 9, 10, 11)
    if _is_x(low_major):
        low = ""
    elif _is_x(low_minor):
        low = f">={low_major}.0.0"
    elif _is_x(low_patch):
        low = f">={low_major}.{low_minor}.0"
    else:
        low = f">={low}"
    if _is_x(high_major):
        high = ""
    elif _is_x(high_minor):
        high = f"<{_plus1(high_major)}.0.0-0"
    elif _is_x(high_patch):
        high = f"<{high_major}.{_plus1(high_minor)}.0-0"
    elif high_pre:
        high = f"<={high_major}.{high_minor}.{high_patch}-{high_pre}"
    else:
        high = f"<={high}"
    return f"{low} {high}".strip()


def _wide(major: str, minor: str) -> str | None:
    """What ``~`` and ``^`` agree on: an x major is any version (``""``), an x minor the whole
    major; None for the rest, which is each one's own."""
    if _is_x(major):
        return ""
    if _is_x(minor):
        return f">={major}.0.0 <{_plus1(major)}.0.0-0"
    return None


def _tilde(comp: str) -> str:
    """``~1.2.3`` -> ``>=1.2.3 <1.3.0-0``, ``~1`` -> ``>=1.0.0 <2.0.0-0``, ``~`` -> any."""
    found = _TILDE.fullmatch(comp)
    if found is None:
        return comp
    major, minor, patch, pre = found.group(1, 2, 3, 4)
    wide = _wide(major, minor)
    if wide is not None:
        return wide
    if _is_x(patch):
        return f">={major}.{minor}.0 <{major}.{_plus1(minor)}.0-0"
    low = f"{major}.{minor}.{patch}" + (f"-{pre}" if pre else "")
    return f">={low} <{major}.{_plus1(minor)}.0-0"


def _caret(comp: str) -> str:
    """``^1.2.3`` -> ``>=1.2.3 <2.0.0-0``, ``^0.2.3`` -> ``>=0.2.3 <0.3.0-0``, ``^0.0.3`` ->
    ``>=0.0.3 <0.0.4-0``: the left-most non-zero number stays."""
    found = _CARET.fullmatch(comp)
    if found is None:
        return comp
    major, minor, patch, pre = found.group(1, 2, 3, 4)
    wide = _wide(major, minor)
    if wide is not None:
        return wide
    if _is_x(patch):
        if major == "0":
            return f">={major}.{minor}.0 <{major}.{_plus1(minor)}.0-0"
        return f">={major}.{minor}.0 <{_plus1(major)}.0.0-0"
    low = f"{major}.{minor}.{patch}" + (f"-{pre}" if pre else "")
    if major != "0":
        return f">={low} <{_plus1(major)}.0.0-0"
    if minor != "0":
        return f">={low} <{major}.{_plus1(minor)}.0-0"
    return f">={low} <{major}.{minor}.{_plus1(patch)}-0"


def _x_range(comp: str) -> str:
    """``1.x`` -> ``>=1.0.0 <2.0.0-0``, ``<=1.2`` -> ``<1.3.0-0``, ``>1`` -> ``>=2.0.0``,
    ``*`` stays (dropped next); ``x.1.2`` stays, to be refused as no comparator."""
    found = _X_RANGE.fullmatch(comp)
    if found is None:
        return comp
    op, major, minor, patch = found.group(1, 2, 3, 4)
    if (_is_x(major) and not _is_x(minor)) or (_is_x(minor) and patch and not _is_x(patch)):
        return comp
    x_major = _is_x(major)
    x_minor = x_major or _is_x(minor)
    x_patch = x_minor or _is_x(patch)
    if op == "=" and x_patch:
        op = ""
    if x_major:
        return "<0.0.0-0" if op in (">", "<") else "*"
    if op and x_patch:
        minor = "0" if x_minor else minor
        patch = "0"
        if op == ">":
            op = ">="
            if x_minor:
                major, minor = _plus1(major), "0"
            else:
                minor = _plus1(minor)
        elif op == "<=":
            op = "<"
            if x_minor:
                major = _plus1(major)
            else:
                minor = _plus1(minor)
        return f"{op}{major}.{minor}.{patch}" + ("-0" if op == "<" else "")
    if x_minor:
        return f">={major}.0.0 <{_plus1(major)}.0.0-0"
    if x_patch:
        return f">={major}.{minor}.0 <{major}.{_plus1(minor)}.0-0"
    return comp


def _desugared(comp: str) -> str:
    """One comparator as written, as the plain comparators it stands for (``parseComparator``)."""
    comp = _BUILD_ANYWHERE.sub("", comp, count=1)
    comp = " ".join(_caret(c) for c in comp.strip(" ").split(" "))
    comp = " ".join(_tilde(c) for c in comp.strip(" ").split(" "))
    comp = " ".join(_x_range(c.strip(" ")) for c in comp.split(" "))
    return _STAR.sub("", comp.strip(" "), count=1)


@dataclass(frozen=True, slots=True)
class RangeSet:
    """One comparator set: the versions between ``low`` and ``high`` (None: unbounded; open:
    the bound itself is out), of which pre-releases only on a [major, minor, patch] in
    ``pre``, those of the set's comparators that carry a pre-release (npm's rule, ``testSet``).
    """

    low: Precedence | None
    low_open: bool
    high: Precedence | None
    high_open: bool
    pre: frozenset[tuple[int, int, int]]
    any: bool  # every comparator was * (npm then reads a range with such a set as just *)

    def contains(self, key: Precedence) -> bool:
        low, high = self.low, self.high
        if low is not None and (key < low or (self.low_open and key == low)):
            return False
        if high is not None and (key > high or (self.high_open and key == high)):
            return False
        return not is_prerelease(key) or key[:3] in self.pre


def _comparator_set(text: str) -> RangeSet:
    """One side of ``||`` (``parseRange``); raises ValueError naming what npm would refuse."""
    text = _BUILD_ANYWHERE.sub("", text)
    hyphen = _HYPHEN.fullmatch(text)
    text = _hyphen(hyphen) if hyphen is not None else text
    text = _COMPARATOR_TRIM.sub(lambda m: m.group(1) + m.group(2) + m.group(3), text)
    text = _TILDE_TRIM.sub(r"\1~", text)
    text = _CARET_TRIM.sub(r"\1^", text)
    desugared = " ".join(_desugared(comp) for comp in text.split(" "))
    low: Precedence | None = None
    high: Precedence | None = None
    low_open = high_open = False
    pre: set[tuple[int, int, int]] = set()
    every_any = True
    for comp in re.split(" +", desugared):
        comp = comp.strip(" ")
        comp = "" if _GTE0.fullmatch(comp) else comp
        if not comp:
            continue  # any version
        every_any = False
        found = _COMPARATOR.fullmatch(comp)
        if found is None:
            raise ValueError(
                f"{comp!r} is not a version, a partial one (1.2, 1.x) or a comparator "
                "(>=1.2.3, ^1.2, ~1.2.3)"
            )
        for number in found.group(3, 4, 5):
            if int(number) > _MAX_NUMBER:
                raise ValueError(f"{number} in {comp!r} is above {_MAX_NUMBER}, npm's largest")
        op = found.group(1)
        key = _key(*found.group(3, 4, 5, 6))
        if is_prerelease(key):
            pre.add(key[:3])
        if op in ("", "=", ">", ">=") and (low is None or key > low or (key == low and op == ">")):
            low, low_open = key, op == ">"
        if op in ("", "=", "<", "<=") and (
            high is None or key < high or (key == high and op == "<")
        ):
            high, high_open = key, op == "<"
    return RangeSet(low, low_open, high, high_open, frozenset(pre), every_any)


def npm_range(text: str) -> tuple[RangeSet, ...]:
    """The comparator sets of an npm range (``new Range(text)``); ValueError when npm refuses
    it. A range of more than one set, one of them any version, is any version."""
    collapsed = _JS_SPACE.sub(" ", text).strip(" ")
    sets = tuple(_comparator_set(part.strip(" ")) for part in collapsed.split("||"))
    if len(sets) > 1:
        sets = next(((s,) for s in sets if s.any), sets)
    return sets
