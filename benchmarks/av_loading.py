"""Reading audio-visual clips from disk: the main process alone vs DataLoader worker processes.

Writes a CREMA-D-layout set of ``--clips`` clips at the published sizes (2.5 s WAVs at
16 kHz, resampled to 22 050 Hz and cut or repeated to 3 s -> a 257 x 188 log-spectrogram;
one 320 x 240 JPEG frame per clip -> 224 x 224, ImageNet-normalised) into a temporary
folder, then times one pass over the training clips in batches of ``--batch`` with
``num_workers`` 0 and ``--workers``, interleaved over ``--repeats`` rounds (best and median).
Both passes give the same tensors (checked).  Training overlaps the reading with the
model's steps, so what workers save per epoch is up to the whole reading time printed here.

    OMP_NUM_THREADS=1 python benchmarks/av_loading.py [--clips 384] [--workers 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from scipy.io import wavfile

from msam_core.batches import iterate_batches
from msam_core.data.av.cremad import load_cremad

EMOTIONS = ("NEU", "HAP", "SAD", "ANG", "FEA", "DIS")


def write_cremad(root: Path, n_clips: int, seed: int = 0) -> Path:
    """A CREMA-D layout of noisy tones and noise images (the content does not matter here)."""
    rng = np.random.default_rng(seed)
    rate = 16000
    t = np.arange(int(2.5 * rate)) / rate
    rows = []
    for k in range(n_clips):
        emotion = EMOTIONS[k % len(EMOTIONS)]
        clip = f"{1000 + k}_IEO_{emotion}_XX"
        wave = 0.3 * np.sin(2 * np.pi * (200 + 40 * k) * t) + 0.05 * rng.standard_normal(t.size)
        (root / "AudioWAV").mkdir(parents=True, exist_ok=True)
        wavfile.write(root / "AudioWAV" / f"{clip}.wav", rate, (wave * 32767).astype(np.int16))
        frames = root / "Image-01-FPS" / clip
        frames.mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 256, (240, 320, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(frames / "frame_00001.jpg", quality=90)
        rows.append(f"{clip},{emotion}")
    (root / "train.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    (root / "test.csv").write_text("\n".join(rows[:6]) + "\n", encoding="utf-8")
    return root


def read_pass(split, batch: int, workers: int) -> tuple[float, list]:
    order = torch.arange(len(split))
    start = time.perf_counter()
    batches = list(iterate_batches(split, order, batch, torch.device("cpu"), workers))
    return time.perf_counter() - start, batches


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clips", type=int, default=384)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = load_cremad(write_cremad(Path(tmp), args.clips), val_fraction=0.1)
        split = data.train
        times: dict[int, list[float]] = {0: [], args.workers: []}
        reference = None
        for repeat in range(args.repeats):
            for workers in sorted(times, reverse=bool(repeat % 2)):
                seconds, batches = read_pass(split, args.batch, workers)
                times[workers].append(seconds)
                if reference is None:
                    reference = batches
                else:  # the same tensors whichever process read them
                    for (x0, y0), (x1, y1) in zip(reference, batches, strict=True):
                        assert torch.equal(y0, y1)
                        assert all(torch.equal(x0[m], x1[m]) for m in x0)
    alone, workers = times[0], times[args.workers]
    shape = {m: tuple(x.shape[1:]) for m, x in reference[0][0].items()}
    print(
        f"{len(split)} clips ({shape}), batches of {args.batch}, {os.cpu_count()} CPUs, "
        f"torch threads {torch.get_num_threads()}"
    )
    print(
        f"main process alone     {min(alone):6.2f} s best, {statistics.median(alone):6.2f} s median"
    )
    print(
        f"{args.workers} worker processes     {min(workers):6.2f} s best, "
        f"{statistics.median(workers):6.2f} s median"
    )
    print(
        f"speed-up {min(alone) / min(workers):.2f}x (best), "
        f"{statistics.median(alone) / statistics.median(workers):.2f}x (median); "
        f"{1e3 * statistics.median(alone) / len(split):.1f} ms per clip in the main process"
    )


if __name__ == "__main__":
    main()
