"""CREMA-D (audio-visual emotion recognition, 6 classes) in the layout of the OGM-GE code.

The user supplies the files (several gigabytes, too large to ship with a library):
WAVs from ``AudioWAV/`` of the CREMA-D release, frames extracted from its videos at
1 frame per second, and the train / test lists published with OGM-GE (CVPR 2022).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from msam_core.data.av.common import (
    Clip,
    build_av_dataset,
    carve_val,
    check_clips,
    check_root,
    label_index,
    read_rows,
    split_configs,
)
from msam_core.data.base import MultimodalDataset
from msam_core.data.registry import register_dataset

NAME = "cremad"
#: Emotion codes in the class order of the published code.
CLASSES = ("NEU", "HAP", "SAD", "FEA", "DIS", "ANG")
LAYOUT = """\
<data_root>/
├── train.csv             one clip per line: <clip_id>,<emotion>  (no header;
├── test.csv              emotion in NEU HAP SAD FEA DIS ANG), e.g. 1001_DFA_ANG_XX,ANG
├── val.csv               (optional; otherwise val is carved from train.csv)
├── AudioWAV/
│   └── <clip_id>.wav
└── Image-01-FPS/
    └── <clip_id>/        frames extracted from the clip's video
        └── *.jpg
"""
CITATION = (
    "Cao, H., Cooper, D. G., Keutmann, M. K., Gur, R. C., Nenkova, A., & Verma, R. (2014). "
    "CREMA-D: Crowd-sourced Emotional Multimodal Actors Dataset. IEEE Transactions on "
    "Affective Computing, 5(4), 377-390."
)


@register_dataset(NAME)
def load_cremad(
    data_root: str | Path | None = None,
    *,
    val_fraction: float = 0.1,
    seed: int = 0,
    audio_dir: str = "AudioWAV",
    visual_dir: str = "Image-01-FPS",
    missing: str = "error",
    **options: Any,
) -> MultimodalDataset:
    """CREMA-D from ``data_root`` (layout in :data:`LAYOUT`): ``audio`` and ``visual``.

    ``audio`` is a log-spectrogram ``[1, F, T]`` (options ``sample_rate`` 22050,
    ``duration`` 3.0, ``n_fft`` 512, ``hop_length`` 353, ``spec_size`` None); ``visual`` is
    ``n_frames`` (1) RGB frames of ``image_size`` (224) stacked to ``[3 * n_frames, H, W]``,
    ImageNet-normalised unless ``normalize_frames=False``.  Without ``val.csv``, a
    stratified ``val_fraction`` of train.csv (fixed by ``seed``) is held out.  ``missing``:
    "error" (default) or "skip" clips whose files are absent.
    """
    audio, frames = split_configs(options, NAME)
    root = check_root(data_root, NAME, LAYOUT)

    def clips_of(csv_name: str) -> list[Clip]:
        path = root / csv_name
        clips = []
        for number, row in enumerate(read_rows(path, NAME, LAYOUT), start=1):
            clip_id, emotion = row[0], row[1]
            label = label_index(emotion, CLASSES, f"{path}, row {number}", NAME, LAYOUT)
            clips.append(
                Clip(
                    clip_id, root / audio_dir / f"{clip_id}.wav", root / visual_dir / clip_id, label
                )
            )
        return check_clips(clips, NAME, LAYOUT, missing)[0]

    train = clips_of("train.csv")
    test = clips_of("test.csv")
    if (root / "val.csv").is_file():
        val = clips_of("val.csv")
    else:
        train, val = carve_val(train, val_fraction, seed)
    return build_av_dataset(
        NAME,
        {"train": train, "val": val, "test": test},
        CLASSES,
        audio,
        frames,
        LAYOUT,
        info={
            "description": "CREMA-D: 91 actors speak 12 sentences in six emotions "
            "(neutral, happy, sad, fear, disgust, anger); audio and face video.",
            "source": str(root),
            "license": "Open Database License (ODbL) v1.0; supplied by the user",
            "citation": CITATION,
            "seed": seed,
        },
    )
