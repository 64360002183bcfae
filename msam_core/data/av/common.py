"""Shared by the audio-visual loaders: layout errors, annotation reading, the clip Dataset.

Every AV loader describes its expected layout as a small tree (``LAYOUT``).  Whatever goes
wrong with the user's files (missing root, missing or unreadable annotation, a clip whose
WAV or frames are missing or broken) raises an error that names the file and shows that
tree, so the fix is obvious without reading the loader's code.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor
from torch.utils.data import Dataset

from msam_core.data.av.audio import AudioConfig, wav_to_spectrogram
from msam_core.data.av.frames import FrameConfig, list_frames, load_frames
from msam_core.data.base import ModalitySpec, MultimodalDataset
from msam_core.data.splits import stratified_split

MISSING_CHOICES = ("error", "skip")
#: Clips listed in an error message before "... and N more".
SHOW_AT_MOST = 5


def _explain(dataset: str, problem: str, layout: str) -> str:
    return f"{dataset}: {problem}\nExpected layout:\n{layout.rstrip()}"


class _LayoutError:
    """Mixin: keeps the parts of the message, so the error pickles (DataLoader workers)."""

    def __init__(self, dataset: str, problem: str, layout: str) -> None:
        super().__init__(_explain(dataset, problem, layout))  # type: ignore[call-arg]
        self.parts = (dataset, problem, layout)

    def __reduce__(self) -> tuple[type, tuple[str, str, str]]:
        return type(self), self.parts


class MissingDataError(_LayoutError, FileNotFoundError):
    """A file or folder the layout requires is absent (the message shows the layout)."""


class MalformedDataError(_LayoutError, ValueError):
    """A file exists but cannot be read as the layout says (the message shows the layout)."""


def check_root(data_root: str | Path | None, dataset: str, layout: str) -> Path:
    """The data root as a Path; MissingDataError if it was not given or does not exist."""
    if data_root is None or str(data_root) == "":
        raise MissingDataError(
            dataset,
            "no data_root given; pass data_root=<folder> "
            "(command line: --dataset_options.data_root=<folder>)",
            layout,
        )
    root = Path(data_root).expanduser()
    if not root.is_dir():
        raise MissingDataError(dataset, f"data_root {root} is not a folder", layout)
    return root


def read_rows(
    path: Path,
    dataset: str,
    layout: str,
    delimiter: str = ",",
    min_fields: int = 2,
    header_startswith: str | None = None,
) -> list[list[str]]:
    """Rows of a delimited annotation file (blank lines skipped, a BOM tolerated).

    A first line starting with ``header_startswith`` is skipped.  Raises MissingDataError
    when the file is absent and MalformedDataError naming the line when a row has fewer
    than ``min_fields`` fields or the file is not text.
    """
    if not path.is_file():
        raise MissingDataError(dataset, f"annotation file {path} is missing", layout)
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except (UnicodeDecodeError, OSError) as err:
        raise MalformedDataError(dataset, f"cannot read {path} as text: {err}", layout) from err
    rows = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        if number == 1 and header_startswith and line.startswith(header_startswith):
            continue
        row = [field.strip() for field in line.split(delimiter)]
        if len(row) < min_fields or not row[0]:
            raise MalformedDataError(
                dataset,
                f"{path}, line {number}: expected at least {min_fields} fields separated by "
                f"{delimiter!r}, got {line!r}",
                layout,
            )
        rows.append(row)
    if not rows:
        raise MalformedDataError(dataset, f"annotation file {path} lists no clips", layout)
    return rows


@dataclass(frozen=True)
class Clip:
    """One labelled clip: its id, its WAV file and its folder of frames."""

    clip_id: str
    audio: Path
    frames: Path
    label: int


def check_clips(
    clips: Sequence[Clip], dataset: str, layout: str, missing: str = "error"
) -> tuple[list[Clip], list[Clip]]:
    """Split ``clips`` into (usable, missing files).

    ``missing="error"`` raises MissingDataError listing the first few clips with a missing
    WAV or frame folder (and how many in all); ``"skip"`` drops them, as the published code
    silently does.  Only existence is checked here; contents are read lazily.
    """
    if missing not in MISSING_CHOICES:
        raise ValueError(f"missing must be one of {MISSING_CHOICES}, got {missing!r}")
    usable, absent, reasons = [], [], []
    for clip in clips:
        problems = []
        if not clip.audio.is_file():
            problems.append(f"no audio file {clip.audio}")
        if not frames_exist(clip.frames):
            problems.append(f"no frame folder with images at {clip.frames}")
        if problems:
            absent.append(clip)
            reasons.append(f"  {clip.clip_id}: " + "; ".join(problems))
        else:
            usable.append(clip)
    if absent and missing == "error":
        shown = reasons[:SHOW_AT_MOST]
        more = len(reasons) - len(shown)
        raise MissingDataError(
            dataset,
            f"{len(absent)} of {len(clips)} listed clips have missing files"
            + (f" (first {len(shown)} shown)" if more else "")
            + ":\n"
            + "\n".join(shown)
            + "\nPass missing='skip' to train on the clips that are present.",
            layout,
        )
    return usable, absent


class AVClipDataset(Dataset):
    """File-backed clips: item ``i`` is ``({"audio": [1, F, T], "visual": [3K, H, W]}, label)``.

    Files are read when an item is requested (nothing is held in memory).  A WAV or image
    that cannot be decoded raises MalformedDataError naming the file and the layout.
    """

    def __init__(
        self,
        clips: Sequence[Clip],
        audio: AudioConfig,
        frames: FrameConfig,
        dataset: str,
        layout: str,
    ) -> None:
        self.clips = list(clips)
        self.audio = audio
        self.frames = frames
        self.dataset = dataset
        self.layout = layout
        self.targets = np.array([c.label for c in self.clips], dtype=np.int64)

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, index: int) -> tuple[dict[str, Tensor], int]:
        clip = self.clips[index]
        try:
            spec = wav_to_spectrogram(clip.audio, self.audio)
        except (ValueError, OSError, EOFError) as err:
            raise MalformedDataError(
                self.dataset,
                f"clip {clip.clip_id}: cannot read WAV {clip.audio}: {err}",
                self.layout,
            ) from err
        try:
            visual = load_frames(clip.frames, self.frames)
        except (ValueError, OSError) as err:
            raise MalformedDataError(
                self.dataset, f"clip {clip.clip_id}: {err}", self.layout
            ) from err
        return {"audio": spec, "visual": visual}, int(clip.label)


def split_configs(options: Mapping[str, Any], dataset: str) -> tuple[AudioConfig, FrameConfig]:
    """Build the audio and frame configs from loader keyword options, rejecting unknown ones."""
    audio_keys = {f.name for f in fields(AudioConfig)}
    frame_keys = {f.name for f in fields(FrameConfig)}
    unknown = sorted(set(options) - audio_keys - frame_keys)
    if unknown:
        raise ValueError(
            f"{dataset}: unknown options {unknown}; audio options are {sorted(audio_keys)}, "
            f"frame options are {sorted(frame_keys)}"
        )
    audio = AudioConfig(**{k: v for k, v in options.items() if k in audio_keys})
    frames = FrameConfig(**{k: v for k, v in options.items() if k in frame_keys})
    return audio, frames


def carve_val(
    clips: Sequence[Clip], val_fraction: float, seed: int
) -> tuple[list[Clip], list[Clip]]:
    """Split train clips into (train, val), stratified by label and fixed by ``seed``."""
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    labels = np.array([c.label for c in clips])
    train_idx, val_idx = stratified_split(labels, (1 - val_fraction, val_fraction), seed)
    return [clips[i] for i in train_idx], [clips[i] for i in val_idx]


def label_index(
    label: str, class_names: Sequence[str], where: str, dataset: str, layout: str
) -> int:
    """Index of ``label`` in ``class_names``; MalformedDataError naming the file line if absent."""
    try:
        return list(class_names).index(label)
    except ValueError:
        raise MalformedDataError(
            dataset, f"{where}: unknown class {label!r}; known classes: {list(class_names)}", layout
        ) from None


def build_av_dataset(
    name: str,
    splits: Mapping[str, Sequence[Clip]],
    class_names: Sequence[str],
    audio: AudioConfig,
    frames: FrameConfig,
    layout: str,
    info: dict,
) -> MultimodalDataset:
    """Wrap the train / val / test clip lists as a :class:`MultimodalDataset` (audio, visual)."""
    parts = {
        s: AVClipDataset(splits[s], audio, frames, name, layout) for s in ("train", "val", "test")
    }
    for split, part in parts.items():
        if len(part) == 0:
            raise MissingDataError(name, f"the {split} split has no usable clips", layout)
    info = dict(info)
    info.setdefault("class_names", list(class_names))
    info["sizes"] = {s: len(p) for s, p in parts.items()}
    info["audio"] = {f.name: getattr(audio, f.name) for f in fields(AudioConfig)}
    info["frames"] = {f.name: getattr(frames, f.name) for f in fields(FrameConfig)}
    return MultimodalDataset(
        name=name,
        modalities=[
            ModalitySpec("audio", "spectrogram", audio.shape),
            ModalitySpec("visual", "image", frames.shape),
        ],
        num_classes=len(class_names),
        train=parts["train"],
        val=parts["val"],
        test=parts["test"],
        info=info,
    )


def frames_exist(folder: Path) -> bool:
    """True when ``folder`` holds at least one frame image."""
    return folder.is_dir() and bool(list_frames(folder))
