"""A plain nn.Sequential run as one function equals the module bit for bit and falls back
where it cannot."""

from __future__ import annotations

import torch
from torch import nn

from msam_core.stacks import stack_forward


def _stack() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(12, 8),
        nn.ReLU(),
        nn.Dropout(0.5),
        nn.Linear(8, 6),
        nn.Tanh(),
        nn.Identity(),
        nn.Linear(6, 3),
        nn.Sigmoid(),
    ).eval()


def test_plain_stack_equals_the_module_and_leaves_its_input_alone():
    stack = _stack()
    x = torch.randn(5, 3, 4)
    before = x.clone()
    forward = stack_forward(stack, {})
    assert forward is not None
    with torch.no_grad():
        assert torch.equal(forward(x), stack(x))
    assert torch.equal(x, before)


def test_given_layers_replace_their_forward_and_only_owned_outputs_are_overwritten():
    stack = nn.Sequential(nn.Linear(4, 4), nn.ReLU()).eval()
    kept = torch.randn(2, 4)
    forward = stack_forward(stack, {stack[0]: (lambda x: kept, False)})
    out = forward(torch.randn(2, 4))
    assert torch.equal(out, kept.relu()) and (kept < 0).any()  # kept was not written
    owned = torch.randn(2, 4)
    forward = stack_forward(stack, {stack[0]: (lambda x: owned, True)})
    assert forward(torch.randn(2, 4)) is owned and (owned >= 0).all()  # ReLU in place


def test_unrecognised_layers_hooks_and_training_dropout_keep_the_modules_forward():
    assert stack_forward(nn.Sequential(nn.Linear(3, 3), nn.GELU()), {}) is None
    assert stack_forward(nn.Sequential(nn.Dropout(0.5)).train(), {}) is None
    assert stack_forward(nn.Linear(3, 3), {}) is None  # not a stack
    hooked = _stack()
    hooked[1].register_forward_hook(lambda module, args, output: output * 2)
    assert stack_forward(hooked, {}) is None
    handle = nn.modules.module.register_module_forward_hook(lambda m, a, o: None)
    try:
        assert stack_forward(_stack(), {}) is None
    finally:
        handle.remove()
