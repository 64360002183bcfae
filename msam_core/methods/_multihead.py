"""Pieces shared by MMPareto, MLA, PMR and G-Blending: checks, gradients, ranks, train parts.

These methods take gradients of several losses with ``torch.autograd.grad`` on the unwrapped
model (and on heads the method owns) and combine them themselves, so DDP's backward hooks
never run; under ``torch.distributed`` they average each gradient over the ranks here
(:func:`average_over_ranks`) before combining, which gives every rank the full batch's
gradients as DDP would (equal per-rank batches, as DDP assumes).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from msam_core.batches import fetch_batch
from msam_core.coalitions import eval_mode, has_feature_path, is_distributed, unwrap
from msam_core.methods.base import Method, build_base_optimizer
from msam_core.optim.scaling import grad as scaled_grad
from msam_core.param_groups import has_modality_groups
from msam_core.shapley import ShapleyResult
from msam_core.step import FirstPass, Update, check_finite_loss, run_step


def require_late_fusion(model: nn.Module, method: str, why: str, min_modalities: int = 2):
    """The protocol model inside ``model``; ValueError unless it has per-modality encoders and
    ``encode`` / ``fuse`` (and at least ``min_modalities`` modalities).  ``why`` says what the
    method needs them for (it ends the first sentence of the message)."""
    core = unwrap(model)
    modalities = list(getattr(core, "modalities", []) or [])
    if len(modalities) < min_modalities:
        raise ValueError(
            f"{method} needs at least {min_modalities} modalities ({why}), got {modalities}"
        )
    if not (has_feature_path(core) and has_modality_groups(core)):
        raise ValueError(
            f"{method} cannot serve early fusion: it {why}, and {type(core).__name__} has no "
            "per-modality encoders with encode/fuse. Use a late-fusion head: --fusion concat, "
            "sum, gated, film or shared"
        )
    return core


def trainable(params: Iterable[nn.Parameter]) -> list[nn.Parameter]:
    return [p for p in params if p.requires_grad]


def gradients(loss: Tensor, params: Sequence[nn.Parameter], retain_graph: bool) -> list[Tensor]:
    """``∂loss/∂p`` for each of ``params`` (zeros where ``loss`` does not depend on ``p``);
    under fp16 taken through the step's loss scaling and returned unscaled."""
    grads = scaled_grad(loss, params, retain_graph=retain_graph)
    return [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads, strict=True)]


def average_over_ranks(tensors: Sequence[Tensor]) -> list[Tensor]:
    """The mean of each tensor over ``torch.distributed`` ranks (one all-reduce); as is alone."""
    if not is_distributed() or not tensors:
        return list(tensors)
    flat = torch.cat([t.reshape(-1) for t in tensors])
    torch.distributed.all_reduce(flat)
    flat /= torch.distributed.get_world_size()
    out, start = [], 0
    for t in tensors:
        out.append(flat[start : start + t.numel()].view_as(t))
        start += t.numel()
    return out


def assign(params: Sequence[nn.Parameter], grads: Sequence[Tensor]) -> None:
    """Set ``p.grad`` of each parameter (the optimizer then steps on them)."""
    for p, g in zip(params, grads, strict=True):
        p.grad = g.detach()


def flat_norm(tensors: Sequence[Tensor]) -> Tensor:
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(t) for t in tensors]))


def dot(a: Sequence[Tensor], b: Sequence[Tensor]) -> Tensor:
    return torch.stack([(x * y).sum() for x, y in zip(a, b, strict=True)]).sum()


def check_fraction(method: str, key: str, value: float, *, allow_zero: bool = False) -> float:
    """``value`` as a float in (0, 1) ([0, 1) with ``allow_zero``); ValueError naming ``key``."""
    value = float(value)
    low_ok = value >= 0 if allow_zero else value > 0
    if not (low_ok and value < 1):
        bounds = "[0, 1)" if allow_zero else "(0, 1)"
        raise ValueError(f"{method}: {key} must be in {bounds}, got {value}")
    return value


class IndexedSplit(Dataset):
    """The samples ``indices`` of ``split``, in that order (file-backed: read item by item, so
    the loop's DataLoader workers still read them)."""

    def __init__(self, split: Dataset, indices: Tensor) -> None:
        self.split = split
        self.indices = torch.as_tensor(indices, dtype=torch.long)

    def __len__(self) -> int:
        return int(self.indices.numel())

    def __getitem__(self, index: int):
        return self.split[int(self.indices[index])]


class _IndexedMemorySplit(IndexedSplit):
    """:class:`IndexedSplit` of an in-memory split: batches gathered in one op."""

    def take(self, indices: Tensor):
        return fetch_batch(self.split, self.indices[torch.as_tensor(indices, dtype=torch.long)])


def subset(split: Dataset, indices: Tensor) -> IndexedSplit:
    """The samples ``indices`` of ``split`` as a split of their own."""
    cls = _IndexedMemorySplit if hasattr(split, "take") else IndexedSplit
    return cls(split, indices)


def seeded_permutation(n: int, seed: int) -> Tensor:
    """A permutation of ``range(n)`` from its own generator (the global RNG is left alone)."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(int(seed)))


@torch.no_grad()
def split_features(
    model: nn.Module, split: Dataset, batch_size: int
) -> tuple[dict[str, Tensor], Tensor]:
    """Eval-mode ``encode`` features ``{m: [N, F]}`` and targets ``[N]`` of a whole split."""
    core = unwrap(model)
    device = next(core.parameters()).device
    chunks: dict[str, list[Tensor]] = {m: [] for m in core.modalities}
    targets = []
    with eval_mode(core):
        for start in range(0, len(split), batch_size):
            index = torch.arange(start, min(start + batch_size, len(split)))
            inputs, y = fetch_batch(split, index)
            features = core.encode({m: x.to(device) for m, x in inputs.items()})
            for m in core.modalities:
                chunks[m].append(features[m])
            targets.append(y.to(device))
    return {m: torch.cat(c) for m, c in chunks.items()}, torch.cat(targets)


class MultiLossMethod(Method):
    """A method whose update combines gradients of several losses itself (module docstring).

    The step is :func:`~msam_core.step.run_step`'s skeleton on the unwrapped model without its
    backward pass (the fused forward at θ with the features kept, the batch's Shapley record);
    the subclass's :meth:`update` takes its gradients, steps the optimizer and returns its
    record fields.  Methods with heads of their own set ``self.heads`` before
    ``Method.__init__``, which builds the optimizer over the model's and the heads' parameters.
    """

    heads: nn.Module | None = None

    def build_optimizer(self, model: nn.Module, config: Any) -> torch.optim.Optimizer:
        heads = [] if self.heads is None else list(self.heads.parameters())
        return build_base_optimizer([*model.parameters(), *heads], config)

    def update(
        self, core: nn.Module, first: FirstPass, inputs: Mapping[str, Tensor], targets: Tensor
    ) -> dict[str, float]:
        """Take the gradients, step the optimizer; return the record's extra fields."""
        raise NotImplementedError

    def step(self, model: nn.Module, inputs: Mapping[str, Tensor], targets: Tensor) -> dict:
        core = unwrap(model)
        fields: dict[str, float] = {}

        def update(first: FirstPass, shapley: ShapleyResult | None) -> Update:
            fields.update(self.update(core, first, inputs, targets))
            return Update()

        value = self.config.shapley_value
        rows = self.shapley_rows(targets)
        result = run_step(
            core, self.optimizer, inputs, targets, update, value=value, backward=False, rows=rows
        )
        record = result.to_record(self.modalities)
        record.update(fields)
        return record

    def checked(self, loss: Tensor, where: str, core: nn.Module, inputs) -> float:
        """``float(loss)``, NonFiniteLossError naming ``where`` when it is NaN or infinite."""
        return check_finite_loss(loss, where, core, inputs)

    def per_modality_heads(self, state: Mapping[str, Any], keys: tuple[str, ...]) -> None:
        """Check ``state`` has exactly ``keys`` and restore ``self.heads`` from
        ``state["heads"]``; ValueError naming what the checkpoint holds or what differs."""
        if set(state) != set(keys):
            raise ValueError(
                f"{self.name} state must hold {sorted(keys)}, got keys {sorted(state)}"
            )
        try:
            self.heads.load_state_dict(state["heads"])
        except RuntimeError as err:
            raise ValueError(
                f"{self.name}: the checkpoint's unimodal heads do not fit this model ({err}); "
                "was it written for another model?"
            ) from err
