"""Whether anything runs around a module's forward besides the forward itself.

The fast paths that stop calling a module as a module (a landscape's fused stack, a training
step's kept features, a fusion head's per-modality terms) take these checks first: a hook they
skipped would silently not run.
"""

from __future__ import annotations

from torch import nn

#: A module's own hook registries.
HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")

#: The global registries of ``nn.modules.module.register_module_*_hook``.
GLOBAL_HOOK_DICTS = tuple(f"_global{name}" for name in HOOK_DICTS)


def has_hooks(module: nn.Module) -> bool:
    """Whether ``module`` itself has a forward or backward (pre-)hook."""
    return any(getattr(module, name, None) for name in HOOK_DICTS)


def global_hooks() -> bool:
    """Whether any global module hook (``nn.modules.module.register_module_*_hook``) is set."""
    return any(getattr(nn.modules.module, name, None) for name in GLOBAL_HOOK_DICTS)
