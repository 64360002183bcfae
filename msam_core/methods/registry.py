"""Method registry: names users type (joint, sam, msam, ...) mapped to :class:`Method` classes.

Built-in methods live one per module in ``msam_core/methods/``; every module there is
imported on first lookup, so a new method registers itself just by adding its module with
``@register_method("name")``; a method defined elsewhere registers when its module is imported.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from typing import Any

from torch import nn

from msam_core.methods.base import Method, check_modality_count
from msam_core.suggest import did_you_mean

_METHODS: dict[str, type[Method]] = {}
_BROKEN: dict[str, str] = {}  # module -> import error, named when a lookup fails
_discovered = False


def register_method(name: str) -> Callable[[type[Method]], type[Method]]:
    """Class decorator: make ``cls`` available as method ``name`` (also sets ``cls.name``)."""

    def decorate(cls: type[Method]) -> type[Method]:
        if not (isinstance(cls, type) and issubclass(cls, Method)):
            raise TypeError(f"register_method({name!r}) expects a Method subclass, got {cls!r}")
        if name in _METHODS and _METHODS[name] is not cls:
            raise ValueError(f"method {name!r} is already registered by {_METHODS[name]!r}")
        cls.name = name
        _METHODS[name] = cls
        return cls

    return decorate


def _discover() -> None:
    """Import every module of this package, once."""
    global _discovered
    if _discovered:
        return
    _discovered = True
    package = importlib.import_module("msam_core.methods")
    for info in pkgutil.iter_modules(package.__path__):
        if info.name not in ("base", "registry") and not info.name.startswith("_"):
            _import(f"msam_core.methods.{info.name}")


def _import(name: str) -> None:
    # one broken method module must not take the others down; its error is reported on lookup
    try:
        importlib.import_module(name)
    except Exception as err:
        _BROKEN[name] = f"{type(err).__name__}: {err}"


def method_names() -> list[str]:
    """Registered method names, sorted."""
    _discover()
    return sorted(_METHODS)


def get_method(name: str) -> type[Method]:
    """The Method class registered as ``name``; ValueError listing the choices if unknown."""
    _discover()
    if name not in _METHODS:
        broken = "".join(f"; {module} failed to import ({err})" for module, err in _BROKEN.items())
        choices = method_names()
        hint = did_you_mean(name, choices)
        raise ValueError(f"unknown method {name!r}{hint}; choose one of {choices}{broken}")
    return _METHODS[name]


def build_method(name: str, model: nn.Module, config: Any) -> Method:
    """Instantiate method ``name`` for ``model`` with knobs from ``config``.

    ``config`` is a :class:`msam_core.config.TrainConfig` or a mapping of its keys (missing
    keys take the TrainConfig defaults).
    """
    cls = get_method(name)
    if isinstance(config, dict):
        from msam_core.config import TrainConfig

        config = TrainConfig.from_dict(config)
    check_method_options(getattr(config, "method_options", None) or {})
    check_modality_count(cls, list(model.modalities))
    return cls(model, config)


def check_method_options(options: Any) -> None:
    """ValueError for ``method_options`` keys no registered method reads (a misspelling).

    Checked against every method, not only the one being built: one config may carry the
    options of several methods (``msam compare`` runs them all from it), which is why the
    methods' options have distinct names (``ogm_alpha``, ``agm_alpha``).
    """
    _discover()
    known = {key: cls.name for cls in _METHODS.values() for key in cls.OPTIONS}
    unknown = sorted(set(options) - set(known))
    if unknown:
        by_method: dict[str, list[str]] = {}
        for key, method in sorted(known.items()):
            by_method.setdefault(method, []).append(key)
        listing = "; ".join(f"{m}: {', '.join(keys)}" for m, keys in sorted(by_method.items()))
        hint = did_you_mean(unknown, known)
        raise ValueError(f"unknown method_options {unknown}{hint}; the methods read {listing}")
