""" "Did you mean ...?" for names users type: datasets, methods, config keys, options, commands.

One helper so every error about a misspelt name reads the same way:
``unknown dataset 'synthtic' (did you mean 'synthetic'?); choose one of [...]``.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


def close_matches(name: str, choices: Iterable[str], n: int = 3) -> list[str]:
    """The choices closest to ``name`` (difflib's ratio >= 0.6; case-insensitive), best first."""
    options = [str(c) for c in choices]
    lowered = {c.lower(): c for c in options}
    found = difflib.get_close_matches(str(name).lower(), list(lowered), n=n, cutoff=0.6)
    return [lowered[f] for f in found]


def did_you_mean(names: str | Iterable[str], choices: Iterable[str]) -> str:
    """``" (did you mean 'x'?)"`` (or ``'x' or 'y'``; with several names, one guess each), or
    ``""`` when nothing is close.  Put it right after the misspelt name in an error message."""
    given = [names] if isinstance(names, str) else list(names)
    options = list(choices)
    parts = []
    for name in given:
        found = close_matches(name, options, n=2)
        if found:
            guess = " or ".join(repr(f) for f in found)
            parts.append(guess if len(given) == 1 else f"{guess} for {name!r}")
    return f" (did you mean {', '.join(parts)}?)" if parts else ""
