"""Two "cameras" on one digit: scikit-learn's 8 x 8 digits cut into left and right halves.

Each half is an image modality ``[1, 8, 4]``.  Degrading one half (Gaussian noise, Gaussian
blur) makes it less informative while the other stays intact, so the imbalance between two
otherwise similar modalities is a dial a teacher can turn.  The digits ship with
scikit-learn; nothing is downloaded.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from msam_core.data.base import ModalitySpec, MultimodalDataset
from msam_core.data.registry import register_dataset
from msam_core.data.splits import DEFAULT_FRACTIONS, make_tensor_splits

HALVES = ("left", "right")
CITATION = (
    "Alpaydin, E., & Kaynak, C. (1998). Optical Recognition of Handwritten Digits [Dataset]. "
    "UCI Machine Learning Repository. https://doi.org/10.24432/C50P49"
)


def degrade(images: np.ndarray, noise: float = 0.0, blur: float = 0.0, seed: int = 0) -> np.ndarray:
    """Blur ``images`` ``[N, H, W]`` (Gaussian, ``blur`` = sigma in pixels), then add noise.

    ``noise`` is the std of additive Gaussian noise in units of the full pixel range (the
    pixels are in [0, 1]).  The noise is drawn once from ``seed``, so the data set is fixed.
    """
    if noise < 0 or blur < 0:
        raise ValueError(f"noise and blur must be >= 0, got noise={noise}, blur={blur}")
    out = images.astype(np.float64)
    if blur > 0:
        # imported here: scipy.ndimage is about half a second of every `import msam_core.data`
        from scipy.ndimage import gaussian_filter

        # Blur within each image only (sigma 0 along the sample axis).
        out = gaussian_filter(out, sigma=(0, blur, blur), mode="constant")
    if noise > 0:
        out = out + np.random.default_rng(seed).normal(0.0, noise, size=out.shape)
    return out.astype(np.float32)


@register_dataset("digits_halves")
def load_digits_halves(
    seed: int = 0,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    standardize: bool = True,
    noise: float = 0.0,
    blur: float = 0.0,
    degraded: str = "right",
) -> MultimodalDataset:
    """sklearn digits (1797 samples, 10 classes) as ``left`` and ``right`` images ``[1, 8, 4]``.

    Pixels are scaled to [0, 1]; the ``degraded`` half (``"left"`` or ``"right"``) is then
    blurred by ``blur`` (Gaussian sigma, pixels) and gets Gaussian ``noise`` (std, in pixel
    range units).  ``noise=0, blur=0`` (default) leaves both halves clean.  Splits are
    stratified by digit and fixed by ``seed``; ``standardize`` z-scores each half with one
    mean and std from the train split (image structure is kept).
    """
    from sklearn.datasets import load_digits

    if degraded not in HALVES:
        raise ValueError(f"degraded must be one of {HALVES}, got {degraded!r}")
    digits = load_digits()
    images = digits.images.astype(np.float32) / 16.0  # [N, 8, 8], pixel values 0..16
    halves = {"left": images[:, :, :4], "right": images[:, :, 4:]}
    # A distinct stream for the noise, so it does not move when the split seed's use changes.
    halves[degraded] = degrade(halves[degraded], noise, blur, seed=seed + 1_000_003)
    inputs = {m: h[:, None, :, :] for m, h in halves.items()}
    train, val, test = make_tensor_splits(
        inputs, digits.target, {m: "image" for m in HALVES}, fractions, seed, standardize
    )
    return MultimodalDataset(
        name="digits_halves",
        modalities=[ModalitySpec(m, "image", (1, 8, 4)) for m in HALVES],
        num_classes=10,
        train=train,
        val=val,
        test=test,
        info={
            "description": "scikit-learn's 8x8 handwritten digits, split into left and right "
            f"4-column halves; the {degraded} half has blur sigma {blur} px and noise std "
            f"{noise} (pixel range 0-1).",
            "class_names": [str(d) for d in range(10)],
            "source": "scikit-learn (sklearn.datasets.load_digits)",
            "license": "CC BY 4.0 (UCI); shipped by scikit-learn",
            "citation": CITATION,
            "seed": seed,
            "fractions": list(fractions),
            "noise": noise,
            "blur": blur,
            "degraded": degraded,
            "standardized": standardize,
        },
    )
