"""Synthetic multimodal classification with tunable modality imbalance (dataset ``synthetic``).

Generative model
----------------
A sample has a class ``y`` drawn uniformly (each split is exactly class-balanced) from
``K = n_classes`` classes. Every modality ``m`` observes the class through its own noisy view::

    x_m = s_m * B_m[:, g_m(y)] + sigma_m * eps,        eps ~ N(0, I)

* ``B_m`` is a matrix with ``K`` orthonormal columns, one *prototype* per class, so every pair of
  distinct prototypes is the same distance apart (``s_m * sqrt(2)``). For ``vector`` modalities the
  columns are random directions in ``R^D``; for ``image`` ``[1, H, W]`` and ``sequence`` ``[C, T]``
  modalities they are random orthonormal mixtures of low-frequency cosine (DCT) patterns, so the
  signal is spatially / temporally smooth while the noise is white: a CNN gains by pooling.
  Because the columns are orthonormal in every kind, ``s_m`` and ``sigma_m`` mean the same thing
  whatever the kind.
* ``s_m`` (``strengths``) is the modality's signal strength and ``sigma_m`` (``noise``) its noise
  level per value; the separation of two classes along their prototype difference is
  ``s_m * sqrt(2) / sigma_m`` noise standard deviations. A larger ``s_m`` also makes the modality's
  inputs larger, so its encoder learns faster in joint training: the two knobs set how strong and
  how quickly learnt a modality is.
* ``g_m`` is what modality ``m`` can tell apart. Classes ``0 .. 2*P*M - 1`` (``P =
  private_pairs``) form pairs ``(0, 1), (2, 3), ...``; pair ``j`` is *owned* by modality
  ``j // P``. Only the owner sees the two classes of its pairs as different: every other modality
  maps both to one prototype (``g_m(2i+1) = 2i``), so it can only guess between them. The
  remaining classes are *shared*: every modality separates them, each with its own strength.

So each modality alone is capped below 100 % (it must guess on the pairs it does not own) while
the fused input can reach 100 %: a weak modality carries information the strong one lacks. In
joint training the strong modality (large ``s / sigma``, learnt first) soon explains the shared
classes and the weak modality's encoder stops receiving gradient for them; its unimodal accuracy
stays low, which is the modality imbalance the toolkit measures, and training the weak modality
better raises the fused accuracy on the pairs it owns and on noisy shared samples.

Defaults (two modalities, ``audio`` strong and ``visual`` weak, mirroring the audio-visual
literature where audio dominates): 8 classes, 32 values per modality, strengths ``(4.0, 2.0)``,
noise ``1.0``, one private pair per modality, 3000 / 500 / 1000 train / val / test samples.

Presets (``--dataset_options.preset NAME``; an option given beside a preset overrides it):
``default`` (the settings above), ``headroom`` (strengths ``[8, 3]``: the weak modality alone is
far above what it reaches inside the joint model) and ``fused_room`` (600 training samples of 128
values per modality: joint training stays clearly below the fused Bayes limit, so a method can
show a fused gain).  Every loaded set carries its Bayes limits in ``info["bayes_limits"]``
(:mod:`msam_core.data.bayes`): each modality alone and all together, with Monte Carlo s.e.

Determinism: one ``seed`` fixes everything. The prototypes and each split come from independent
streams derived from it, so changing ``n_train`` leaves the validation and test sets unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from msam_core.data.base import ModalitySpec, MultimodalDataset, TensorSplit
from msam_core.data.bayes import bayes_limits
from msam_core.data.registry import register_dataset

SYNTHETIC_KINDS = ("vector", "image", "sequence")
_DEFAULT_NAMES = {1: ("audio",), 2: ("audio", "visual"), 3: ("audio", "visual", "text")}
_STRONGEST, _WEAKEST = 4.0, 2.0
#: named settings (module docstring); None = the loader's default for that option
PRESETS: dict[str, dict[str, Any]] = {
    "default": {"n_train": 3000, "strengths": None, "noise": 1.0, "dims": 32},
    "headroom": {"n_train": 3000, "strengths": (8.0, 3.0), "noise": 1.0, "dims": 32},
    "fused_room": {"n_train": 600, "strengths": None, "noise": 1.0, "dims": 128},
}


def default_modality_names(n_modalities: int) -> list[str]:
    """``audio``, ``visual`` (, ``text``) for up to three modalities, else ``m0 .. m{M-1}``."""
    if n_modalities in _DEFAULT_NAMES:
        return list(_DEFAULT_NAMES[n_modalities])
    return [f"m{i}" for i in range(n_modalities)]


def default_strengths(n_modalities: int) -> list[float]:
    """Evenly spaced from strong (4.0) to weak (2.0) in modality order."""
    if n_modalities == 1:
        return [_STRONGEST]
    return np.linspace(_STRONGEST, _WEAKEST, n_modalities).round(6).tolist()


def _per_modality(value: Any, names: Sequence[str], what: str) -> list:
    """Broadcast a scalar to every modality, or check a per-modality sequence's length."""
    if isinstance(value, (str, int, float)):
        return [value] * len(names)
    values = list(value)
    if len(values) != len(names):
        raise ValueError(
            f"{what} has {len(values)} entries but there are {len(names)} modalities "
            f"{list(names)}; give one value or one per modality"
        )
    return values


def _dct_basis(length: int, n_freq: int) -> Tensor:
    """Orthonormal DCT-II basis ``[length, n_freq]`` (lowest frequencies first)."""
    t = torch.arange(length, dtype=torch.float64) + 0.5
    k = torch.arange(n_freq, dtype=torch.float64)
    basis = torch.cos(math.pi * t[:, None] * k[None, :] / length)
    basis[:, 0] /= math.sqrt(2.0)
    return basis * math.sqrt(2.0 / length)


def _smooth_pool(kind: str, shape: tuple[int, ...], n_needed: int) -> Tensor:
    """Orthonormal low-frequency patterns ``[prod(shape), P]`` with ``P >= n_needed``.

    ``image`` ``[1, H, W]``: separable 2-D cosines with the lowest ``u + v``; ``sequence``
    ``[C, T]``: per-channel 1-D cosines with the lowest frequencies.
    """
    n_pool = max(2 * n_needed, 16)
    if kind == "image":
        _, height, width = shape
        rows, cols = _dct_basis(height, height), _dct_basis(width, width)
        freqs = sorted(
            ((u, v) for u in range(height) for v in range(width)), key=lambda f: (sum(f), f)
        )
        freqs = freqs[: min(n_pool, height * width)]
        patterns = [torch.outer(rows[:, u], cols[:, v]).reshape(-1) for u, v in freqs]
    else:
        channels, length = shape
        per_channel = min(length, math.ceil(n_pool / channels))
        cosines = _dct_basis(length, per_channel)
        patterns = []
        for k in range(per_channel):
            for c in range(channels):
                pattern = torch.zeros(channels, length, dtype=torch.float64)
                pattern[c] = cosines[:, k]
                patterns.append(pattern.reshape(-1))
    return torch.stack(patterns, dim=1)


def _prototype_basis(
    kind: str, shape: tuple[int, ...], n_classes: int, generator: torch.Generator
) -> Tensor:
    """``[prod(shape), K]`` with orthonormal columns: one unit-norm prototype per class."""
    size = math.prod(shape)
    if kind == "vector":
        pool = torch.eye(size, dtype=torch.float64)
    else:
        pool = _smooth_pool(kind, shape, n_classes)
    if pool.shape[1] < n_classes:
        raise ValueError(
            f"a {kind} modality of shape {list(shape)} cannot hold {n_classes} orthogonal class "
            f"prototypes; give it at least {n_classes} values (larger dims / image_size / "
            "sequence_shape) or fewer classes"
        )
    mixing = torch.randn(pool.shape[1], n_classes, generator=generator, dtype=torch.float64)
    q, _ = torch.linalg.qr(mixing)
    return pool @ q


def _visible_class(n_classes: int, n_modalities: int, private_pairs: int) -> Tensor:
    """``[M, K]`` long: entry ``(m, y)`` is the prototype index modality ``m`` shows for ``y``."""
    visible = torch.arange(n_classes).repeat(n_modalities, 1)
    for pair in range(private_pairs * n_modalities):
        owner = pair // private_pairs
        for m in range(n_modalities):
            if m != owner:
                visible[m, 2 * pair + 1] = 2 * pair
    return visible


def _split_seeds(seed: int) -> list[int]:
    """Independent 63-bit seeds for the prototypes, train, val and test."""
    children = np.random.SeedSequence(seed).spawn(4)
    return [int(c.generate_state(1, dtype=np.uint64)[0] >> np.uint64(1)) for c in children]


@register_dataset("synthetic")
def load_synthetic(
    *,
    seed: int = 0,
    preset: str = "default",
    n_train: int | None = None,
    n_val: int = 500,
    n_test: int = 1000,
    n_classes: int = 8,
    modalities: int | Sequence[str] = 2,
    strengths: float | Sequence[float] | None = None,
    noise: float | Sequence[float] | None = None,
    kinds: str | Sequence[str] = "vector",
    dims: int | Sequence[int] | None = None,
    image_size: int = 16,
    sequence_shape: tuple[int, int] = (2, 32),
    private_pairs: int = 1,
) -> MultimodalDataset:
    """Build the synthetic dataset described in the module docstring.

    Args:
        seed: fixes prototypes and samples; the same seed gives identical tensors.
        preset: a name in :data:`PRESETS`; it sets ``n_train``, ``strengths``, ``noise`` and
            ``dims`` where those are not given.
        n_train, n_val, n_test: samples per split (each split is class-balanced).
        n_classes: ``K``; must be at least ``2 * private_pairs * M``.
        modalities: number of modalities ``M`` (default names from
            :func:`default_modality_names`) or the names themselves.
        strengths: signal strength ``s_m`` per modality (or one for all); default
            :func:`default_strengths` (4.0 down to 2.0).
        noise: noise standard deviation ``sigma_m`` per value, per modality or one for all.
        kinds: ``vector`` ``[D]``, ``image`` ``[1, image_size, image_size]`` or ``sequence``
            ``sequence_shape = [C, T]``, per modality or one for all.
        dims: ``D`` of vector modalities, per modality or one for all.
        private_pairs: class pairs each modality alone separates (0: all classes shared).

    Returns:
        A :class:`MultimodalDataset` of :class:`TensorSplit` s; ``info`` records the generative
        parameters, which classes are shared and which pairs each modality owns.
    """
    if preset not in PRESETS:
        raise ValueError(f"synthetic has no preset {preset!r}; choose one of {list(PRESETS)}")
    chosen = PRESETS[preset]
    n_train = chosen["n_train"] if n_train is None else n_train
    strengths = chosen["strengths"] if strengths is None else strengths
    noise = chosen["noise"] if noise is None else noise
    dims = chosen["dims"] if dims is None else dims
    names = default_modality_names(modalities) if isinstance(modalities, int) else list(modalities)
    if not names:
        raise ValueError("need at least one modality")
    if len(set(names)) != len(names):
        raise ValueError(f"modality names must be unique, got {names}")
    n_mod = len(names)
    strengths = _per_modality(
        default_strengths(n_mod) if strengths is None else strengths, names, "strengths"
    )
    noise = _per_modality(noise, names, "noise")
    kinds = _per_modality(kinds, names, "kinds")
    dims = _per_modality(dims, names, "dims")
    for name, kind in zip(names, kinds, strict=True):
        if kind not in SYNTHETIC_KINDS:
            raise ValueError(
                f"modality {name!r}: synthetic data has no kind {kind!r}; choose one of "
                f"{SYNTHETIC_KINDS}"
            )
    if any(s < 0 for s in strengths) or any(sd <= 0 for sd in noise):
        raise ValueError(f"need strengths >= 0 and noise > 0, got {strengths} and {noise}")
    if private_pairs < 0 or n_classes < max(2, 2 * private_pairs * n_mod):
        raise ValueError(
            f"n_classes={n_classes} is too few for {private_pairs} private pair(s) per modality "
            f"with {n_mod} modalities: need n_classes >= {max(2, 2 * private_pairs * n_mod)}"
        )
    for split, n in (("n_train", n_train), ("n_val", n_val), ("n_test", n_test)):
        if n < 1:
            raise ValueError(f"{split} must be at least 1, got {n}")

    shapes = []
    for kind, dim in zip(kinds, dims, strict=True):
        if kind == "vector":
            shapes.append((int(dim),))
        elif kind == "image":
            shapes.append((1, int(image_size), int(image_size)))
        else:
            shapes.append(tuple(int(v) for v in sequence_shape))
    specs = [ModalitySpec(n, k, s) for n, k, s in zip(names, kinds, shapes, strict=True)]

    task_seed, *split_seeds = _split_seeds(seed)
    task_gen = torch.Generator().manual_seed(task_seed)
    bases = [_prototype_basis(s.kind, s.shape, n_classes, task_gen) for s in specs]
    visible = _visible_class(n_classes, n_mod, private_pairs)

    def make_split(n: int, split_seed: int) -> TensorSplit:
        gen = torch.Generator().manual_seed(split_seed)
        targets = (torch.arange(n) % n_classes)[torch.randperm(n, generator=gen)]
        inputs = {}
        for m, spec in enumerate(specs):
            signal = bases[m][:, visible[m, targets]].T * strengths[m]
            eps = torch.randn(n, math.prod(spec.shape), generator=gen, dtype=torch.float64)
            x = signal + noise[m] * eps
            inputs[spec.name] = x.to(torch.float32).reshape(n, *spec.shape)
        return TensorSplit(inputs, targets)

    owners = {
        name: [[2 * p, 2 * p + 1] for p in range(m * private_pairs, (m + 1) * private_pairs)]
        for m, name in enumerate(names)
    }
    info = {
        "description": "Synthetic classes seen through modalities of different strength; "
        "shared classes every modality separates and private pairs only one does.",
        "seed": seed,
        "strengths": dict(zip(names, map(float, strengths), strict=True)),
        "noise": dict(zip(names, map(float, noise), strict=True)),
        "private_pairs": owners,
        "shared_classes": list(range(2 * private_pairs * n_mod, n_classes)),
        "preset": preset,
        "bayes_limits": bayes_limits(names, visible.numpy(), strengths, noise),
        "licence": "generated; no licence needed",
    }
    return MultimodalDataset(
        name="synthetic",
        modalities=specs,
        num_classes=n_classes,
        train=make_split(n_train, split_seeds[0]),
        val=make_split(n_val, split_seeds[1]),
        test=make_split(n_test, split_seeds[2]),
        info=info,
    )
