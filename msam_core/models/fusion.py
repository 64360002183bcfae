"""Late-fusion heads: per-modality features ``{m: [B, F_m]}`` -> fused vector -> logits.

Every head is ``head(features, mask) -> [B, C]``: ``combine`` joins the features into one vector
``[B, fused_dim]``, then a classifier (dropout, optional hidden ReLU layer, linear) gives logits.
``feature_dim`` is one width ``F`` for every modality, or ``{m: F_m}`` when the encoders differ.

* ``concat``: ``[h_1, ..., h_M]`` (``fused_dim = F_1 + ... + F_M``).
* ``sum``: ``h_1 + ... + h_M`` (``F``); one classifier shared by every modality; needs one ``F``.
* ``gated``: a gated multimodal unit (Arevalo et al., 2017) for ``M`` modalities:
  ``t_m = tanh(W_m h_m)`` (each ``[B, F]``, ``F = max F_m``), gates
  ``z = softmax_m(W_z [h_1, ..., h_M])`` per feature, fused ``sum_m z_m * t_m`` (``F``).
  :meth:`GatedFusion.gates` returns ``z`` for inspection.
* ``film``: feature-wise linear modulation (Perez et al., 2018). The first modality (in
  ``model.modalities`` order) is modulated, all the others condition it together:
  ``[gamma, beta] = W [h_2, ..., h_M]``, fused ``(1 + gamma) * h_1 + beta`` (``F_1``). With two
  modalities that is "the second modulates the first"; reorder the modalities to choose which is
  modulated. ``1 + gamma`` starts the modulation near identity.

The mask is validated but not otherwise used: an absent modality is already represented by the
features of its baseline input (docs/design.md, "Model protocol"), so heads need no special
case for it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from msam_core.hooks import global_hooks, has_hooks
from msam_core.masking import validate_mask
from msam_core.models.base import feature_dims


def make_classifier(
    in_features: int, num_classes: int, hidden: int | None = None, dropout: float = 0.0
) -> nn.Sequential:
    """Logits from ``[B, in_features]``: ``Dropout -> Linear`` when ``hidden`` is None, else
    ``Dropout -> Linear(hidden) -> ReLU -> Dropout -> Linear``."""
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")
    if hidden is None:
        return nn.Sequential(nn.Dropout(dropout), nn.Linear(in_features, num_classes))
    if hidden < 1:
        raise ValueError(f"hidden must be a positive width or None, got {hidden}")
    return nn.Sequential(
        nn.Dropout(dropout),
        nn.Linear(in_features, hidden),
        nn.ReLU(),
        nn.Dropout(dropout),
        nn.Linear(hidden, num_classes),
    )


class FusionHead(nn.Module):
    """Base class: subclasses set ``fused_dim`` and implement ``combine``."""

    fused_dim: int

    def __init__(
        self,
        modalities: Sequence[str],
        feature_dim: int | Mapping[str, int],
        num_classes: int,
        hidden: int | None = None,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.modalities = list(modalities)
        self.feature_dims = feature_dims(feature_dim, self.modalities)
        #: the width the head works in: the largest modality's (all of them when equal)
        self.feature_dim = max(self.feature_dims.values())
        self.fused_dim = self._fused_dim()
        self.classifier = make_classifier(self.fused_dim, num_classes, hidden, dropout)

    def _fused_dim(self) -> int:
        return self.feature_dim

    def combine(self, features: Mapping[str, Tensor]) -> Tensor:
        """Fused vector ``[B, fused_dim]`` from ``{m: [B, F_m]}``."""
        raise NotImplementedError

    def forward(self, features: Mapping[str, Tensor], mask: Tensor | None = None) -> Tensor:
        batch_size = features[self.modalities[0]].shape[0]
        validate_mask(mask, len(self.modalities), batch_size)
        return self.classifier(self.combine(features))

    def first_layer_parts(self, features: Mapping[str, Tensor]) -> dict[str, Tensor] | None:
        """Each modality's term of the classifier's first ``Linear``, ``{m: [N, H]}`` (no
        bias), for a head whose ``combine`` is linear (concat, sum): their sum through
        :meth:`after_first_layer` is ``head(features)`` up to rounding, so coalition values
        need each modality's term once instead of the head run on every coalition's rows.
        None where that would not be exact: another head, a subclass, dropout in training
        mode, or a hook or instance-level forward anywhere in the head (never taken on trust).
        """
        if not self._linear_combine():
            return None
        weight = self.classifier[1].weight
        return {m: features[m] @ weight[:, cols].T for m, cols in self._columns().items()}

    def after_first_layer(self, z: Tensor) -> Tensor:
        """Logits from a sum of :meth:`first_layer_parts` ``z [N, H]``: bias, then the rest."""
        bias = self.classifier[1].bias
        return self.classifier[2:](z if bias is None else z + bias)

    def _columns(self) -> dict[str, slice]:
        """The first ``Linear``'s input columns each modality's features meet."""
        raise NotImplementedError

    def _linear_combine(self) -> bool:
        """Whether this head is exactly ``combine`` then make_classifier's layers, as built:
        concat or sum, a plain ``Sequential`` of ``Dropout`` (inactive), ``Linear``, then
        ``ReLU`` / ``Dropout`` / ``Linear``, nothing replaced on an instance, no hooks."""
        own = ("combine", "first_layer_parts", "after_first_layer", "_columns")
        if type(self) not in (ConcatFusion, SumFusion) or not _plain(self, own):
            return False
        classifier = self.classifier
        if type(classifier) is not nn.Sequential or not _plain(classifier):
            return False
        layers = list(classifier)
        if len(layers) < 2 or type(layers[0]) is not nn.Dropout or type(layers[1]) is not nn.Linear:
            return False
        if layers[0].training and layers[0].p > 0:
            return False
        return all(type(x) in (nn.Linear, nn.ReLU, nn.Dropout) and _plain(x) for x in layers)


def _plain(module: nn.Module, methods: tuple[str, ...] = ()) -> bool:
    """No hooks on ``module``, none global, and neither ``forward`` nor ``methods`` set on the
    instance."""
    replaced = any(name in vars(module) for name in ("forward", *methods))
    return not replaced and not has_hooks(module) and not global_hooks()


class ConcatFusion(FusionHead):
    """Concatenate the features in modality order."""

    def _fused_dim(self) -> int:
        return sum(self.feature_dims.values())

    def combine(self, features: Mapping[str, Tensor]) -> Tensor:
        return torch.cat([features[m] for m in self.modalities], dim=1)

    def _columns(self) -> dict[str, slice]:
        columns, start = {}, 0
        for m in self.modalities:
            columns[m] = slice(start, start + self.feature_dims[m])
            start += self.feature_dims[m]
        return columns


class SumFusion(FusionHead):
    """Add the features element-wise (every modality's width must be the same)."""

    def _fused_dim(self) -> int:
        if len(set(self.feature_dims.values())) > 1:
            raise ValueError(
                f"sum fusion adds the features element-wise, so every modality needs the same "
                f"width; got {self.feature_dims}. Use concat, gated or film fusion, or one "
                f"feature_dim for all"
            )
        return self.feature_dim

    def combine(self, features: Mapping[str, Tensor]) -> Tensor:
        return torch.stack([features[m] for m in self.modalities]).sum(0)

    def _columns(self) -> dict[str, slice]:
        return {m: slice(None) for m in self.modalities}


class GatedFusion(FusionHead):
    """Gated multimodal unit: softmax gates over modalities weight each transformed feature."""

    def __init__(
        self,
        modalities: Sequence[str],
        feature_dim: int,
        num_classes: int,
        hidden: int | None = None,
        dropout: float = 0.0,
    ) -> None:
        super().__init__(modalities, feature_dim, num_classes, hidden, dropout)
        n = len(self.modalities)
        self.transforms = nn.ModuleDict(
            {m: nn.Linear(self.feature_dims[m], self.feature_dim) for m in self.modalities}
        )
        self.gate = nn.Linear(sum(self.feature_dims.values()), n * self.feature_dim)

    def gates(self, features: Mapping[str, Tensor]) -> Tensor:
        """Gate weights ``[B, M, F]``; they sum to 1 over modalities for every feature."""
        joined = torch.cat([features[m] for m in self.modalities], dim=1)
        logits = self.gate(joined).view(-1, len(self.modalities), self.feature_dim)
        return logits.softmax(dim=1)

    def combine(self, features: Mapping[str, Tensor]) -> Tensor:
        transformed = torch.stack(
            [torch.tanh(self.transforms[m](features[m])) for m in self.modalities], dim=1
        )
        return (self.gates(features) * transformed).sum(1)


class FiLMFusion(FusionHead):
    """The first modality's features, scaled and shifted by a map of all the others'."""

    def __init__(
        self,
        modalities: Sequence[str],
        feature_dim: int,
        num_classes: int,
        hidden: int | None = None,
        dropout: float = 0.0,
    ) -> None:
        if len(modalities) < 2:
            raise ValueError(
                f"film fusion needs at least two modalities (one modulated, one or more "
                f"conditioning), got {list(modalities)}"
            )
        super().__init__(modalities, feature_dim, num_classes, hidden, dropout)
        self.target = self.modalities[0]
        self.conditioners = self.modalities[1:]
        condition = sum(self.feature_dims[m] for m in self.conditioners)
        self.film = nn.Linear(condition, 2 * self.feature_dims[self.target])

    def _fused_dim(self) -> int:
        return self.feature_dims[self.modalities[0]]  # the modulated modality's width

    def modulation(self, features: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
        """``(gamma, beta)``, each ``[B, F_1]``, computed from the conditioning modalities."""
        condition = torch.cat([features[m] for m in self.conditioners], dim=1)
        gamma, beta = self.film(condition).chunk(2, dim=1)
        return gamma, beta

    def combine(self, features: Mapping[str, Tensor]) -> Tensor:
        gamma, beta = self.modulation(features)
        return (1.0 + gamma) * features[self.target] + beta


class SharedFusion(nn.Module):
    """One classifier for every modality, outputs blended by their uncertainty (``shared``)."""

    def __init__(
        self,
        modalities: Sequence[str],
        feature_dim: int,
        num_classes: int,
        hidden: int | None = None,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.modalities = list(modalities)
        self.feature_dim = int(feature_dim)
        self.classifier = make_classifier(self.feature_dim, num_classes, hidden, dropout)

    def unimodal_logits(self, features: Mapping[str, Tensor]) -> Tensor:
        """``[M, B, C]``: the shared classifier on each modality's features alone."""
        return torch.stack([self.classifier(features[m]) for m in self.modalities])

    @staticmethod
    def uncertainty_weights(logits: Tensor) -> Tensor:
        """``[M, B]`` weights from ``[M, B, C]`` logits: the less entropy, the more weight."""
        log_p = logits.log_softmax(dim=-1)
        entropy = -(log_p.exp() * log_p).sum(-1)
        return (-entropy).softmax(dim=0)

    def forward(self, features: Mapping[str, Tensor], mask: Tensor | None = None) -> Tensor:
        batch_size = features[self.modalities[0]].shape[0]
        validate_mask(mask, len(self.modalities), batch_size)
        logits = self.unimodal_logits(features)
        return (self.uncertainty_weights(logits).unsqueeze(-1) * logits).sum(0)


FUSION_HEADS: dict[str, type[nn.Module]] = {
    "concat": ConcatFusion,
    "sum": SumFusion,
    "gated": GatedFusion,
    "film": FiLMFusion,
    "shared": SharedFusion,
}
