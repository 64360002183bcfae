"""AVE (Audio-Visual Event localisation, 28 event classes) as clip classification.

The split lists are the AVE release's ``trainSet.txt`` / ``valSet.txt`` / ``testSet.txt``
(``Category&VideoID&Quality&StartTime&EndTime``), as the imbalance papers that follow
OGM-GE use them; audio and frames are extracted per video in the OGM-GE pre-processing
layout (``audio/<id>.wav``, ``visual/<id>/*.jpg``).  The user supplies the files.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from msam_core.data.av.common import (
    Clip,
    build_av_dataset,
    check_clips,
    check_root,
    label_index,
    read_rows,
    split_configs,
)
from msam_core.data.base import MultimodalDataset
from msam_core.data.registry import register_dataset

NAME = "ave"
#: The 28 AVE event categories in the release's order (class index = position).
CLASSES = (
    "Church bell",
    "Male speech, man speaking",
    "Bark",
    "Fixed-wing aircraft, airplane",
    "Race car, auto racing",
    "Female speech, woman speaking",
    "Helicopter",
    "Violin, fiddle",
    "Flute",
    "Ukulele",
    "Frying (food)",
    "Truck",
    "Shofar",
    "Motorcycle",
    "Acoustic guitar",
    "Train horn",
    "Clock",
    "Banjo",
    "Goat",
    "Baby cry, infant cry",
    "Bus",
    "Chainsaw",
    "Cat",
    "Horse",
    "Toilet flush",
    "Rodents, rats, mice",
    "Accordion",
    "Mandolin",
)
SPLIT_FILES = {"train": "trainSet.txt", "val": "valSet.txt", "test": "testSet.txt"}
LAYOUT = """\
<data_root>/
├── trainSet.txt    one video per line: <Category>&<VideoID>&<Quality>&<StartTime>&<EndTime>
├── valSet.txt      (the AVE release's lists; a header line is skipped), e.g.
├── testSet.txt     Church bell&RUhOCu3LNXM&good&0&10
├── audio/
│   └── <VideoID>.wav
└── visual/
    └── <VideoID>/  frames extracted from the video
        └── *.jpg
"""
CITATION = (
    "Tian, Y., Shi, J., Li, B., Duan, Z., & Xu, C. (2018). Audio-Visual Event Localization "
    "in Unconstrained Videos. In Proceedings of the European Conference on Computer Vision "
    "(ECCV), 247-263."
)


@register_dataset(NAME)
def load_ave(
    data_root: str | Path | None = None,
    *,
    audio_dir: str = "audio",
    visual_dir: str = "visual",
    missing: str = "error",
    class_names: list[str] | None = None,
    seed: int = 0,
    **options: Any,
) -> MultimodalDataset:
    """AVE from ``data_root`` (layout in :data:`LAYOUT`), with its official train/val/test.

    Modalities ``audio`` ``[1, F, T]`` and ``visual`` ``[3 * n_frames, H, W]``; the audio
    and frame options are those of :func:`msam_core.data.av.cremad.load_cremad`
    (``n_frames`` defaults to 3 here, as in the published AVE set-ups).  ``class_names``
    replaces the 28 release categories if your lists use other names.  ``missing``: "error"
    (default) or "skip" videos whose files are absent.  ``seed`` is accepted like every
    loader's but changes nothing: AVE's splits are official and reading is deterministic.
    """
    del seed
    options.setdefault("n_frames", 3)
    audio, frames = split_configs(options, NAME)
    root = check_root(data_root, NAME, LAYOUT)
    classes = tuple(class_names) if class_names else CLASSES
    splits = {}
    for split, filename in SPLIT_FILES.items():
        path = root / filename
        rows = read_rows(path, NAME, LAYOUT, delimiter="&", header_startswith="Category&")
        clips = []
        for number, row in enumerate(rows, start=1):
            category, video_id = row[0], row[1]
            label = label_index(category, classes, f"{path}, row {number}", NAME, LAYOUT)
            clips.append(
                Clip(
                    video_id,
                    root / audio_dir / f"{video_id}.wav",
                    root / visual_dir / video_id,
                    label,
                )
            )
        splits[split] = check_clips(clips, NAME, LAYOUT, missing)[0]
    return build_av_dataset(
        NAME,
        splits,
        classes,
        audio,
        frames,
        LAYOUT,
        info={
            "description": "AVE: 4143 ten-second YouTube videos of 28 audio-visual events "
            "(AudioSet categories), one event label per video.",
            "source": str(root),
            "license": "see the AVE release (YouTube videos); supplied by the user",
            "citation": CITATION,
        },
    )
