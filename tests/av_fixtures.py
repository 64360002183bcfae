"""Write tiny audio-visual data sets in each supported layout (a few WAVs and JPEGs).

Each writer takes an empty folder and returns it after writing a complete, valid layout
whose clips carry a class-dependent tone and frame colour.  Tests then break one file on
purpose to check the error messages.  Everything is small: 0.25 s of 8 kHz audio and
16 x 16 frames, so loading a whole fixture takes milliseconds.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from scipy.io import wavfile

SAMPLE_RATE = 8000
SECONDS = 0.25
FRAME_SIZE = 16
#: Loader options that match the fixtures: 0.25 s at 8 kHz, a 64-point STFT -> [1, 33, 32].
AUDIO_OPTIONS = {"sample_rate": 8000, "duration": 0.25, "n_fft": 64, "hop_length": 64}
FRAME_OPTIONS = {"image_size": 12}


def write_wav(path: Path, label: int, seconds: float = SECONDS, rate: int = SAMPLE_RATE) -> None:
    """A 16-bit mono tone whose pitch depends on ``label``."""
    t = np.arange(int(seconds * rate)) / rate
    tone = 0.5 * np.sin(2 * np.pi * (300 + 150 * label) * t)
    path.parent.mkdir(parents=True, exist_ok=True)
    wavfile.write(path, rate, (tone * 32767).astype(np.int16))


def write_frames(folder: Path, label: int, count: int = 3) -> None:
    """``count`` JPEG frames whose colour depends on ``label`` (brightness on the frame)."""
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(count):
        colour = ((60 * label) % 256, 40 * k % 256, 200 - 30 * label % 200)
        Image.new("RGB", (FRAME_SIZE, FRAME_SIZE), colour).save(folder / f"frame_{k + 1:05d}.jpg")


def make_cremad(root: Path, per_class: int = 4, classes=("NEU", "HAP", "SAD")) -> Path:
    """CREMA-D layout: train.csv / test.csv, AudioWAV/<id>.wav, Image-01-FPS/<id>/*.jpg."""
    root.mkdir(parents=True, exist_ok=True)
    rows = {"train.csv": [], "test.csv": []}
    for label, emotion in enumerate(classes):
        for k in range(per_class):
            clip = f"10{k:02d}_IEO_{emotion}_XX"
            split = "test.csv" if k == 0 else "train.csv"
            rows[split].append(f"{clip},{emotion}")
            write_wav(root / "AudioWAV" / f"{clip}.wav", label)
            write_frames(root / "Image-01-FPS" / clip, label)
    for name, lines in rows.items():
        (root / name).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root


def make_ave(root: Path, per_split: int = 2, classes=("Church bell", "Bark")) -> Path:
    """AVE layout: train/val/testSet.txt (``&``-separated), audio/<id>.wav, visual/<id>/*.jpg."""
    root.mkdir(parents=True, exist_ok=True)
    for split in ("train", "val", "test"):
        lines = ["Category&VideoID&Quality&StartTime&EndTime"]
        for label, category in enumerate(classes):
            for k in range(per_split):
                video = f"{split}{label}x{k}"
                lines.append(f"{category}&{video}&good&0&10")
                write_wav(root / "audio" / f"{video}.wav", label)
                write_frames(root / "visual" / video, label, count=4)
        (root / f"{split}Set.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root


def make_kinetics_sounds(root: Path, per_class: int = 3, n_classes: int = 3) -> Path:
    """VGG&KS layout: my_train/my_test.txt, train|test/<id>/<id>.wav + frames, stat.txt."""
    root.mkdir(parents=True, exist_ok=True)
    names = [f"playing instrument {c}" for c in range(n_classes)]
    (root / "stat.txt").write_text("\n".join(names) + "\n", encoding="utf-8")
    lines = {"train": [], "test": []}
    for label in range(n_classes):
        for k in range(per_class):
            split = "test" if k == 0 else "train"
            clip = f"clip{label}_{k:06d}_{k + 10:06d}"
            lines[split].append(f"{clip},10,{label}")
            write_wav(root / split / clip / f"{clip}.wav", label)
            write_frames(root / split / clip, label, count=5)
    for split, rows in lines.items():
        (root / f"my_{split}.txt").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return root


def make_avmnist(root: Path, n_train: int = 12, n_test: int = 6, seed: int = 0) -> Path:
    """MultiBench AV-MNIST arrays: image/{split}_data.npy [N, 784], audio [N, 112, 112]."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("test", n_test)):
        labels = np.arange(n) % 10
        images = rng.integers(0, 256, size=(n, 784)).astype(np.float32)
        audio = rng.integers(0, 256, size=(n, 112, 112)).astype(np.float32)
        (root / "image").mkdir(parents=True, exist_ok=True)
        (root / "audio").mkdir(parents=True, exist_ok=True)
        np.save(root / "image" / f"{split}_data.npy", images)
        np.save(root / "audio" / f"{split}_data.npy", audio)
        np.save(root / f"{split}_labels.npy", labels)
    return root
