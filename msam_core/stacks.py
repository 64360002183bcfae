"""Plain layer stacks (an ``nn.Sequential`` of Linear / ReLU / Flatten / ...) run as functions.

A loss-landscape grid runs the same small network at every point, so per point the costs
around the matrix products add up: a module call per layer and a new tensor per activation.
:func:`stack_forward` turns a recognised stack into one function that calls no modules and
applies activations in place on tensors it made itself; every layer computes what its own
forward does (``F.linear`` for a Linear), so outputs are bit for bit the module's.  Anything
it does not recognise keeps the module's own forward.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from msam_core.hooks import global_hooks, has_hooks

Step = Callable[[Tensor], tuple[Tensor, bool]]  # (output, whether the stack owns it)

_ACTIVATIONS: dict[type[nn.Module], tuple[Callable[[Tensor], Tensor], Callable]] = {
    nn.ReLU: (torch.relu, torch.relu_),
    nn.Tanh: (torch.tanh, torch.tanh_),
    nn.Sigmoid: (torch.sigmoid, torch.sigmoid_),
}


def _linear(module: nn.Linear) -> Step:
    # weight and bias are read per call (the grid writes them in place, functional_call swaps
    # them), from the dict: nn.Module.__getattr__ costs a grid point about 10 µs
    found = module._parameters
    return lambda x: (F.linear(x, found["weight"], found["bias"]), True)


def _activation(module: nn.Module) -> Step:
    fresh, in_place = _ACTIVATIONS[type(module)]
    return lambda x, owned=False: (in_place(x) if owned else fresh(x), True)


def _step(module: nn.Module, replaced: Mapping[nn.Module, tuple[Callable, bool]]) -> Step | None:
    if has_hooks(module):
        return None
    if module in replaced:
        forward, owned = replaced[module]
        return lambda x: (forward(x), owned)
    if type(module) is nn.Linear:
        return _linear(module)
    if type(module) in _ACTIVATIONS:
        return _activation(module)
    if type(module) is nn.Flatten:
        return lambda x: (module(x), False)  # a view of its input
    if type(module) is nn.Identity or (type(module) is nn.Dropout and not module.training):
        return lambda x: (x, False)
    return None


def stack_forward(
    stack: nn.Module, replaced: Mapping[nn.Module, tuple[Callable, bool]]
) -> Callable[[Tensor], Tensor] | None:
    """One function equal to ``stack(x)`` for an ``nn.Sequential`` whose every layer is
    recognised, else None.

    ``replaced``: layers whose forward is given (``{layer: (forward, owned)}``, ``owned`` when
    that forward returns a tensor nobody else reads, so it may be overwritten).  Activations
    run in place only on owned tensors (outputs of this stack's linear layers and activations);
    a layer with hooks is not recognised (its hooks would not run).  For inference: no
    autograd through the in-place activations.
    """
    if type(stack) is not nn.Sequential or len(stack) == 0 or global_hooks():
        return None
    steps = []
    for module in stack:
        step = _step(module, replaced)
        if step is None:
            return None
        steps.append((step, type(module) in _ACTIVATIONS))

    def forward(x: Tensor) -> Tensor:
        owned = False
        for step, activation in steps:
            x, owned = step(x, owned) if activation else step(x)
        return x

    return forward
