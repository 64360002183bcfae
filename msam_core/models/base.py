"""The model protocol (docs/design.md) as base classes: modality order, baselines, masking, checks.

Every model maps ``inputs: dict[str, Tensor]`` (one ``[B, *shape]`` tensor per modality) and an
optional bool ``mask`` (``[M]`` or ``[B, M]``, in ``model.modalities`` order) to logits
``[B, C]``. An absent modality's input is replaced by its *baseline* (zeros unless fitted, see
:meth:`MultimodalModel.fit_baselines`) before the network sees it, so the mask acts only through
the inputs: ``model(x, mask) == model(apply_input_mask(x, mask, model.modalities,
model.baselines))``.

Late-fusion models also expose ``encode`` (each encoder on its own modality) and ``fuse``, with
``forward(x, mask) == fuse(encode(apply_input_mask(x, mask, ...)), mask)``. The built-in
encoders and heads use no batch statistics, so samples never interact inside a batch and the
feature-masking fast path (replace an absent modality's features by
:meth:`LateFusionModel.baseline_features`, then ``fuse``) equals input masking exactly.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import torch
from torch import Tensor, nn

from msam_core.data.base import ModalitySpec
from msam_core.masking import apply_input_mask, check_inputs

BASELINE_KINDS = ("zeros", "mean")


def feature_dims(feature_dim: int | Mapping[str, int], modalities: Sequence[str]) -> dict[str, int]:
    """``{modality: width}`` from one width for all or a mapping naming every modality."""
    if isinstance(feature_dim, Mapping):
        missing = [m for m in modalities if m not in feature_dim]
        extra = sorted(set(feature_dim) - set(modalities))
        if missing or extra:
            raise ValueError(
                f"feature_dim gives widths for {sorted(feature_dim)} but the modalities are "
                f"{list(modalities)}; give one width per modality, or one int for all"
            )
        dims = {m: feature_dim[m] for m in modalities}
    else:
        dims = dict.fromkeys(modalities, feature_dim)
    for m, width in dims.items():
        if isinstance(width, bool) or not isinstance(width, int) or width < 1:
            raise ValueError(f"feature_dim of modality {m!r} must be a positive int, got {width!r}")
    return dims


class MultimodalModel(nn.Module):
    """Holds the modality order, per-modality baselines (buffers) and input checks.

    Baselines are buffers, so they move with ``.to(device)`` and travel in ``state_dict``
    (a checkpoint restores them).
    """

    def __init__(self, modalities: Sequence[ModalitySpec], num_classes: int) -> None:
        super().__init__()
        specs = list(modalities)
        if not specs:
            raise ValueError("a model needs at least one modality")
        names = [spec.name for spec in specs]
        if len(set(names)) != len(names):
            raise ValueError(f"modality names must be unique, got {names}")
        bad = [n for n in names if not n or "." in n]
        if bad:
            # names key submodules and buffers (state_dict entries), where dots are separators
            raise ValueError(f"modality names must be non-empty and contain no '.', got {bad}")
        if num_classes < 2:
            raise ValueError(f"num_classes must be at least 2, got {num_classes}")
        self.modalities: list[str] = names
        self.modality_specs: dict[str, ModalitySpec] = {spec.name: spec for spec in specs}
        self.num_classes = int(num_classes)
        for spec in specs:
            self.register_buffer(f"baseline_{spec.name}", torch.zeros(spec.shape))

    @property
    def baselines(self) -> dict[str, Tensor]:
        """Per-modality baseline input ``[*shape]`` that replaces an absent modality."""
        return {m: getattr(self, f"baseline_{m}") for m in self.modalities}

    def set_baselines(self, baselines: Mapping[str, Tensor]) -> None:
        """Overwrite the baselines of the named modalities (each ``[*shape]``)."""
        for name, value in baselines.items():
            if name not in self.modality_specs:
                raise KeyError(f"unknown modality {name!r}; the model has {self.modalities}")
            buffer = getattr(self, f"baseline_{name}")
            value = torch.as_tensor(value)
            if tuple(value.shape) != tuple(buffer.shape):
                raise ValueError(
                    f"baseline for modality {name!r} must have shape {list(buffer.shape)}, "
                    f"got {list(value.shape)}"
                )
            buffer.copy_(value.to(buffer))

    @torch.no_grad()
    def fit_baselines(
        self, data: Mapping[str, Tensor] | Iterable[Mapping[str, Tensor]], kind: str = "mean"
    ) -> None:
        """Set baselines from data: ``"mean"`` (per-value mean over samples) or ``"zeros"``.

        ``data`` is one batch ``{modality: [N, *shape]}`` or an iterable of such batches (for
        example ``(x for x, _ in loader)``); the mean is exact over all samples.
        """
        if kind not in BASELINE_KINDS:
            raise ValueError(f"unknown baseline kind {kind!r}; choose one of {BASELINE_KINDS}")
        if kind == "zeros":
            self.set_baselines({m: torch.zeros_like(b) for m, b in self.baselines.items()})
            return
        batches = [data] if isinstance(data, Mapping) else data
        sums = {m: torch.zeros_like(b, dtype=torch.float64) for m, b in self.baselines.items()}
        count = 0
        for batch in batches:
            n = check_inputs(batch, self.modalities)
            self.check_shapes(batch)
            for m in self.modalities:
                sums[m] += batch[m].to(device=sums[m].device, dtype=torch.float64).sum(0)
            count += n
        if count == 0:
            raise ValueError("fit_baselines got no samples")
        self.set_baselines({m: s / count for m, s in sums.items()})

    def check_shapes(self, inputs: Mapping[str, Tensor]) -> int:
        """Check names, batch size and per-sample shapes against the specs; return batch size.

        Raises KeyError / ValueError naming the modality, the expected and the received shape.
        """
        batch_size = check_inputs(inputs, self.modalities)
        for m in self.modalities:
            expected = tuple(self.modality_specs[m].shape)
            got = tuple(inputs[m].shape[1:])
            if got != expected:
                raise ValueError(
                    f"modality {m!r}: expected input shape [B, {', '.join(map(str, expected))}] "
                    f"(per sample {list(expected)}), received {list(inputs[m].shape)}"
                )
        return batch_size

    def mask_inputs(self, inputs: Mapping[str, Tensor], mask: Tensor | None) -> dict[str, Tensor]:
        """Inputs with every absent modality replaced by its baseline (after shape checks)."""
        self.check_shapes(inputs)
        return apply_input_mask(inputs, mask, self.modalities, self.baselines)


class LateFusionModel(MultimodalModel):
    """One encoder per modality, then a fusion head: ``fuse(encode(masked inputs), mask)``.

    ``encoders[m]`` maps ``[B, *shape_m]`` to features ``[B, F_m]`` (an ``nn.ModuleDict``:
    ``model.encoders["audio"].parameters()`` are one modality's parameters); ``head`` maps the
    feature dict and the mask to logits ``[B, C]``.  ``feature_dim`` is one width ``F`` for
    every modality or ``{modality: F_m}`` (encoders of different sizes).
    """

    def __init__(
        self,
        modalities: Sequence[ModalitySpec],
        num_classes: int,
        encoders: Mapping[str, nn.Module],
        head: nn.Module,
        feature_dim: int | Mapping[str, int],
    ) -> None:
        super().__init__(modalities, num_classes)
        if set(encoders) != set(self.modalities):
            raise ValueError(
                f"encoders are given for {sorted(encoders)} but the modalities are "
                f"{self.modalities}"
            )
        self.encoders = nn.ModuleDict({m: encoders[m] for m in self.modalities})
        self.head = head
        self.feature_dims: dict[str, int] = feature_dims(feature_dim, self.modalities)
        widths = set(self.feature_dims.values())
        #: the one feature width when every modality has it, else None (see feature_dims)
        self.feature_dim: int | None = widths.pop() if len(widths) == 1 else None

    def encode(self, inputs: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Features ``{m: [B, F_m]}``, each encoder run on its own modality only."""
        self.check_shapes(inputs)
        features = {}
        for m in self.modalities:
            encoder = self.encoders[m]
            h = encoder(inputs[m])
            width = self.feature_dims[m]
            if h.ndim != 2 or h.shape[1] != width:
                raise ValueError(
                    f"encoder of modality {m!r} ({type(encoder).__name__}) returned features of "
                    f"shape {list(h.shape)}; expected [B, {width}]"
                )
            features[m] = h
        return features

    def fuse(self, features: Mapping[str, Tensor], mask: Tensor | None = None) -> Tensor:
        """Logits ``[B, C]`` from per-modality features ``{m: [B, F_m]}``."""
        missing = [m for m in self.modalities if m not in features]
        if missing:
            raise KeyError(
                f"features are missing modalities {missing}; the model expects {self.modalities}"
            )
        return self.head(features, mask)

    def fusion_parts(self, features: Mapping[str, Tensor]) -> dict[str, Tensor] | None:
        """Each modality's term of the fusion head's first linear layer, ``{m: [N, H]}``,
        when the head is linear up to it (concat and sum fusion, in eval mode) and ``fuse`` is
        this class's own; their sum through :meth:`after_fusion_parts` is ``fuse(features)``
        up to rounding (coalition values use it).  None otherwise."""
        if type(self).fuse is not LateFusionModel.fuse or "fuse" in vars(self):
            return None
        parts = getattr(self.head, "first_layer_parts", None)
        return parts(features) if callable(parts) else None

    def after_fusion_parts(self, z: Tensor) -> Tensor:
        """Logits ``[N, C]`` from a sum of :meth:`fusion_parts` ``z [N, H]``."""
        return self.head.after_first_layer(z)

    def baseline_features(self) -> dict[str, Tensor]:
        """Encoding of each modality's baseline input, ``{m: [1, F_m]}``.

        The feature-masking fast path substitutes these for absent modalities before ``fuse``.
        """
        return self.encode({m: b.unsqueeze(0) for m, b in self.baselines.items()})

    def forward(self, inputs: Mapping[str, Tensor], mask: Tensor | None = None) -> Tensor:
        """Logits ``[B, C]``; absent modalities (``mask`` False) are replaced by baselines."""
        return self.fuse(self.encode(self.mask_inputs(inputs, mask)), mask)
