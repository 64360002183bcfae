"""Small synthetic run directories in the run-directory format, for the msam_viz tests.

Records go through :class:`msam_core.record.RunWriter` (the writer training uses), so the
tests read exactly what a real run writes.  Every value is a closed-form function of the
step or epoch (the functions below), so tests compare figures against these functions
rather than against numbers copied into the test.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from msam_core.record import CONFIG_FILE, RunWriter, write_json_atomic


def phi(step: int, n_steps: int, modalities: tuple[str, ...]) -> dict[str, float]:
    """φ per modality at ``step``: step 0 has no positive contribution (equal shares);
    then the first modality leads until half-way, after which the second one leads."""
    if step == 0:
        return {m: (-0.1 if i == 0 else 0.0) for i, m in enumerate(modalities)}
    first_half = step < n_steps // 2
    values = {m: 0.05 for m in modalities}
    values[modalities[0]] = 0.5 if first_half else 0.1
    values[modalities[1]] = 0.2 if first_half else 0.4
    return values


def shares(step: int, n_steps: int, modalities: tuple[str, ...]) -> dict[str, float]:
    """The Shapley shares the figures should draw at ``step`` (DESIGN's M-SAM weights)."""
    values = phi(step, n_steps, modalities)
    positive = {m: max(v, 0.0) for m, v in values.items()}
    total = sum(positive.values())
    if total == 0:
        return {m: 1.0 / len(modalities) for m in modalities}
    return {m: v / total for m, v in positive.items()}


def dominant(step: int, n_steps: int, modalities: tuple[str, ...]) -> str:
    values = phi(step, n_steps, modalities)
    return max(modalities, key=lambda m: (values[m], -modalities.index(m)))


def sharpness(step: int) -> float:
    return 0.1 + 0.01 * step


def sharpness_of(modality_index: int, step: int) -> float:
    return 0.02 * (modality_index + 1) + 0.001 * step


def top_eig(step: int) -> float:
    return 10.0 + step / 10.0


def accuracy(epoch: int, split: str, modality_index: int | None = None) -> float:
    """Fused (``modality_index=None``) or unimodal accuracy at ``epoch`` on ``split``."""
    base = 0.5 if modality_index is None else 0.4 - 0.1 * modality_index
    return base + 0.05 * epoch + {"train": 0.03, "test": -0.02}.get(split, 0.0)


def final_accuracy_for_seed(seed: int, epochs: int) -> float:
    """Seeds shift a run's accuracy by 0.01 per seed, so seed spread is known exactly."""
    return accuracy(epochs - 1, "val") + 0.01 * seed


def write_run(
    root: Path,
    name: str = "run",
    *,
    method: str = "msam",
    seed: int = 0,
    dataset: str = "synthetic",
    acc_offset: float = 0.0,
    modalities: tuple[str, ...] = ("audio", "visual"),
    epochs: int = 4,
    steps_per_epoch: int = 25,
    every: int = 5,
    with_sharpness: bool = True,
    with_modality_sharpness: bool = True,
    with_hessian: bool = True,
    with_unimodal: bool = True,
    with_landscape: bool = True,
    truncate_last_line: bool = False,
    dataset_options: dict | None = None,
) -> Path:
    """Write one run directory ``root/name`` and return its path.

    ``every``: steps between the sparse records (``sharpness/<m>``, ``hessian/*``).
    ``truncate_last_line`` leaves half a record at the end of ``iterations.jsonl``, as a run
    killed mid-write does.  ``acc_offset`` shifts every accuracy (fused and unimodal), so runs
    on different datasets differ by a known amount.  ``name`` may hold ``/`` (nested folders).
    """
    path = Path(root) / name
    n_steps = epochs * steps_per_epoch
    with RunWriter(path) as writer:
        config = {
            "name": Path(name).name,
            "method": method,
            "seed": seed,
            "dataset": dataset,
            "dataset_options": dataset_options or {},
            "epochs": epochs,
            "run": {"modalities": list(modalities), "device": "cpu"},
        }
        write_json_atomic(path / CONFIG_FILE, config)
        for step in range(n_steps):
            record: dict = {
                "step": step,
                "epoch": step // steps_per_epoch,
                "loss": 2.0 * math.exp(-step / n_steps),
                "lr": 0.01,
                "dominant": dominant(step, n_steps, modalities),
            }
            for m, v in phi(step, n_steps, modalities).items():
                record[f"phi/{m}"] = v
            if method == "msam":
                for m, v in shares(step, n_steps, modalities).items():
                    record[f"weight/{m}"] = v
            if with_sharpness:
                record["sharpness"] = sharpness(step)
            if step % every == 0:
                if with_modality_sharpness:
                    for i, m in enumerate(modalities):
                        record[f"sharpness/{m}"] = sharpness_of(i, step)
                    record["sharpness/fusion"] = sharpness_of(len(modalities), step)
                if with_hessian:
                    record["hessian/top_eig"] = top_eig(step)
                    record["hessian/trace"] = 5 * top_eig(step)
                    for i, m in enumerate(modalities):
                        record[f"hessian/top_eig/{m}"] = top_eig(step) / (i + 2)
                record["time/step_s"] = 0.01
            writer.log_iteration(record)
        for epoch in range(epochs):
            for split in ("train", "val", "test"):
                shift = 0.01 * seed + acc_offset
                row: dict = {
                    "epoch": epoch,
                    "split": split,
                    # as the training loop records it: optimiser steps taken so far
                    "step": (epoch + 1) * steps_per_epoch,
                    "loss": 1.0 / (epoch + 1),
                    "acc": accuracy(epoch, split) + shift,
                    "balance": 0.5 + 0.1 * epoch,
                }
                if with_unimodal:
                    for i, m in enumerate(modalities):
                        row[f"acc/{m}"] = accuracy(epoch, split, i) + shift
                step = (epoch + 1) * steps_per_epoch - 1
                for m, v in phi(step, n_steps, modalities).items():
                    row[f"phi/{m}"] = v
                if with_hessian and split == "val":
                    row["hessian/top_eig"] = top_eig(row["step"])
                writer.log_epoch(row)
    if with_landscape:
        write_landscapes(path / "landscapes", modalities)
    if truncate_last_line:
        with open(path / "iterations.jsonl", "a", encoding="utf-8") as fh:
            fh.write('{"step": 99999, "epoch": 0, "lo')
    return path


def write_demo_runs(root: Path, mfeat_offset: float = 0.0) -> Path:
    """Runs as ``msam demo`` writes them, ``root/<dataset>/<method>``: joint and msam on
    synthetic (audio, visual) and on mfeat (fou, pix), names repeated across datasets; the
    mfeat runs' accuracies are shifted by ``mfeat_offset``."""
    small = {"epochs": 2, "steps_per_epoch": 4, "with_landscape": False}
    for method in ("joint", "msam"):
        write_run(root, f"synthetic/{method}", method=method, **small)
        write_run(
            root,
            f"mfeat/{method}",
            method=method,
            dataset="mfeat",
            modalities=("fou", "pix"),
            acc_offset=mfeat_offset,
            **small,
        )
    return root


def write_sparse_run(root: Path, name: str = "sparse") -> Path:
    """A joint-training run without Hessian, per-modality sharpness, unimodal accuracy or
    landscapes: what a cheap run records."""
    return write_run(
        root,
        name,
        method="joint",
        with_modality_sharpness=False,
        with_hessian=False,
        with_unimodal=False,
        with_landscape=False,
    )


def landscape_loss(alpha: np.ndarray, beta: np.ndarray) -> np.ndarray:
    """The 2-D landscape the fixture stores: a tilted bowl, minimum at (0.1, -0.2)."""
    return 0.5 + (alpha - 0.1) ** 2 + 2.0 * (beta + 0.2) ** 2


def curve_loss(subspace_index: int, alpha: np.ndarray) -> np.ndarray:
    """1-D landscape of subspace ``k`` (0: whole model, then each modality): curvature k+1."""
    return 0.5 + (subspace_index + 1) * alpha**2


#: PCA trajectory in grid units (the final checkpoint at the origin), one row per epoch;
#: on grid points (spacing 0.2), so the surface height there is exactly ``landscape_loss``.
TRAJECTORY = np.array([[-0.8, 0.6], [-0.4, 0.4], [-0.2, 0.2], [0.0, 0.0]])


def write_landscapes(directory: Path, modalities: tuple[str, ...], epoch: int = 3) -> None:
    """1-D curves (whole model and each modality), a random 2-D grid and a PCA 2-D grid with
    its trajectory, written by msam_core's own landscape writer."""
    from msam_core.landscape import Landscape, grid_axis, save_landscape

    run_dir = directory.parent
    axis = grid_axis(11, 1.0)
    for k, subspace in enumerate(("all", *modalities)):
        loss = curve_loss(k, axis)
        save_landscape(
            Landscape(
                alphas=axis,
                betas=np.zeros(0),
                loss=loss,
                acc=1.0 - loss / 4,
                subspace=subspace,
                seeds=np.array([k]),
                center_loss=float(curve_loss(k, np.array(0.0))),
                center_acc=float(1.0 - curve_loss(k, np.array(0.0)) / 4),
                n_eval=64,
                split="val",
                epoch=epoch,
            ),
            run_dir,
        )
    a, b = np.meshgrid(axis, axis, indexing="ij")  # loss[i, j] at (alphas[i], betas[j])
    grid = landscape_loss(a, b)
    common = {"alphas": axis, "betas": axis.copy(), "loss": grid, "acc": 1.0 - grid / 4}
    save_landscape(
        Landscape(**common, subspace="all", seeds=np.array([0, 1]), epoch=epoch, split="val"),
        run_dir,
    )
    save_landscape(
        Landscape(
            **common,
            subspace="pca",
            epoch=epoch,
            split="val",
            trajectory=TRAJECTORY,
            trajectory_epochs=np.arange(len(TRAJECTORY)),
            explained_variance=np.array([0.8, 0.15]),
            direction_scale=np.array([2.0, 1.0]),
        ),
        run_dir,
    )
