"""Training methods sharing one loop: joint, sam, msam (and more, registered by name)."""

from msam_core.methods.base import Method, build_base_optimizer
from msam_core.methods.registry import build_method, get_method, method_names, register_method

__all__ = [
    "Method",
    "build_base_optimizer",
    "build_method",
    "get_method",
    "method_names",
    "register_method",
]
