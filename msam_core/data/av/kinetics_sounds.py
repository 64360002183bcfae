"""Kinetics-Sounds (Kinetics clips whose action is audible) in the OGM-GE VGG&KS layout.

Each split has a folder with one sub-folder per clip, holding the clip's frames and its WAV
(``train/<clip_id>/<clip_id>.wav`` next to ``train/<clip_id>/*.jpg``).  The lists name one
clip per line, the clip id first and the class last; the class is an index or a name.
The number of classes follows the lists (31 in the OGM-GE release).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from msam_core.data.av.common import (
    Clip,
    MalformedDataError,
    build_av_dataset,
    carve_val,
    check_clips,
    check_root,
    read_rows,
    split_configs,
)
from msam_core.data.base import MultimodalDataset
from msam_core.data.registry import register_dataset

NAME = "kinetics_sounds"
LIST_FILES = {"train": "my_train.txt", "val": "my_val.txt", "test": "my_test.txt"}
LAYOUT = """\
<data_root>/
├── my_train.txt    one clip per line, comma-separated: <clip_id>,...,<class>
├── my_test.txt     (first field the clip id, last field the class: an index
├── my_val.txt      or a name); my_val.txt is optional (else carved from train)
├── stat.txt        (optional) class names, one per line: line i is class i
├── train/
│   └── <clip_id>/
│       ├── <clip_id>.wav
│       └── *.jpg   frames extracted from the clip
├── test/
│   └── <clip_id>/ ...
└── val/            (optional; val clips are looked up here, then in train/)
"""
CITATION = (
    "Arandjelovic, R., & Zisserman, A. (2017). Look, Listen and Learn. In Proceedings of "
    "the IEEE International Conference on Computer Vision (ICCV), 609-617."
)


def _class_names(root: Path, lists: dict[str, list[list[str]]]) -> tuple[list[str] | None, bool]:
    """Class names (from stat.txt, or sorted label names) and whether labels are indices."""
    labels = [row[-1] for rows in lists.values() for row in rows]
    numeric = all(label.lstrip("-").isdigit() for label in labels)
    stat = root / "stat.txt"
    if stat.is_file():
        names = [row[0] for row in read_rows(stat, NAME, LAYOUT, min_fields=1)]
        return names, numeric
    if numeric:
        return None, True
    return sorted(set(labels)), False


@register_dataset(NAME)
def load_kinetics_sounds(
    data_root: str | Path | None = None,
    *,
    val_fraction: float = 0.1,
    seed: int = 0,
    missing: str = "error",
    **options: Any,
) -> MultimodalDataset:
    """Kinetics-Sounds from ``data_root`` (layout in :data:`LAYOUT`): ``audio``, ``visual``.

    Audio and frame options as for :func:`msam_core.data.av.cremad.load_cremad`
    (``n_frames`` defaults to 3 here).  Class names come from ``stat.txt`` when present;
    integer labels without it give classes "0" .. "max".  Without ``my_val.txt``, a
    stratified ``val_fraction`` of train (fixed by ``seed``) is held out.
    """
    options.setdefault("n_frames", 3)
    audio, frames = split_configs(options, NAME)
    root = check_root(data_root, NAME, LAYOUT)
    present = [s for s, f in LIST_FILES.items() if s != "val" or (root / f).is_file()]
    lists = {s: read_rows(root / LIST_FILES[s], NAME, LAYOUT) for s in present}
    names, numeric = _class_names(root, lists)
    if names is None:
        top = max(int(row[-1]) for rows in lists.values() for row in rows)
        names = [str(k) for k in range(top + 1)]

    def label_of(value: str, where: str) -> int:
        index = int(value) if numeric else (names.index(value) if value in names else -1)
        if not 0 <= index < len(names):
            raise MalformedDataError(
                NAME, f"{where}: class {value!r} is not one of the {len(names)} classes", LAYOUT
            )
        return index

    splits = {}
    for split, rows in lists.items():
        folders = [root / split] if split != "val" else [root / "val", root / "train"]
        folder = next((f for f in folders if f.is_dir()), folders[0])
        clips = []
        for number, row in enumerate(rows, start=1):
            clip_id = row[0]
            label = label_of(row[-1], f"{root / LIST_FILES[split]}, row {number}")
            clips.append(
                Clip(clip_id, folder / clip_id / f"{clip_id}.wav", folder / clip_id, label)
            )
        splits[split] = check_clips(clips, NAME, LAYOUT, missing)[0]
    if "val" not in splits:
        splits["train"], splits["val"] = carve_val(splits["train"], val_fraction, seed)
    return build_av_dataset(
        NAME,
        splits,
        names,
        audio,
        frames,
        LAYOUT,
        info={
            "description": "Kinetics-Sounds: Kinetics-400 clips of actions that can be heard "
            "(playing instruments, tools, animals, ...).",
            "source": str(root),
            "license": "see Kinetics (YouTube videos); supplied by the user",
            "citation": CITATION,
            "seed": seed,
        },
    )
