"""Check option dictionaries against the function that takes them, before anything runs.

``dataset_options`` and ``model_options`` are handed to a loader or to ``build_model`` as
keyword arguments; a misspelt key would otherwise surface as a bare ``TypeError`` traceback
(or, for a catch-all ``**options``, wherever the function looks).  :func:`check_options`
turns it into a ValueError that lists the keys the function does take.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from msam_core.suggest import did_you_mean

_NAMED = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)


def check_options(
    func: Callable[..., Any],
    options: Mapping[str, Any],
    what: str,
    *,
    set_elsewhere: Iterable[str] = (),
) -> None:
    """ValueError naming ``options`` keys ``func`` has no parameter for.

    ``what`` names the options in the message (``dataset_options of 'mfeat'``);
    ``set_elsewhere``: parameters the caller fills itself, not options.  A function that
    takes ``**kwargs`` checks those itself: only its named parameters are known here, so it
    is left alone.
    """
    params = inspect.signature(func).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return
    skip = set(set_elsewhere)
    valid = [p.name for p in params if p.kind in _NAMED and p.name not in skip]
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ValueError(
            f"unknown {what} {unknown}{did_you_mean(unknown, valid)}; valid keys are {valid}"
        )
