"""Data files shipped inside the package (``msam_core/data/files``): find, read, write.

The arrays are stored as ``.npz`` archives whose members are LZMA-compressed (about 20 %
smaller than numpy's default deflate); ``numpy.load`` reads them unchanged, so reading
needs nothing beyond numpy and the standard library.
"""

from __future__ import annotations

import zipfile
from collections.abc import Mapping
from functools import lru_cache
from importlib import resources
from pathlib import Path

import numpy as np

FILES_PACKAGE = "msam_core.data"
FILES_DIR = "files"


def shipped_path(filename: str) -> Path:
    """Path of a file shipped in ``msam_core/data/files``; FileNotFoundError if absent."""
    path = Path(str(resources.files(FILES_PACKAGE).joinpath(FILES_DIR, filename)))
    if not path.is_file():
        raise FileNotFoundError(
            f"shipped data file {path} is missing; the msam installation is incomplete "
            "(reinstall msam, or run `pip install -e .` from a full checkout)"
        )
    return path


def load_arrays(filename: str) -> dict[str, np.ndarray]:
    """Every array of a shipped ``.npz`` file, read-only, decompressed once per process."""
    return dict(_load_arrays_cached(filename))


@lru_cache(maxsize=8)
def _load_arrays_cached(filename: str) -> dict[str, np.ndarray]:
    with np.load(shipped_path(filename), allow_pickle=False) as archive:
        arrays = {key: archive[key] for key in archive.files}
    for value in arrays.values():
        value.flags.writeable = False  # shared between calls: callers copy, never mutate
    return arrays


def read_text(filename: str) -> str:
    """A shipped text file (licence, citation), as a string."""
    return shipped_path(filename).read_text(encoding="utf-8")


def save_arrays(path: str | Path, arrays: Mapping[str, np.ndarray]) -> None:
    """Write ``arrays`` as an ``.npz`` whose members are LZMA-compressed ``.npy`` files."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_LZMA) as archive:
        for key, value in arrays.items():
            with archive.open(f"{key}.npy", "w") as member:
                np.lib.format.write_array(member, np.asarray(value), allow_pickle=False)
