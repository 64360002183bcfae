"""``msam landscape RUN``: a loss-landscape grid around one of a run's checkpoints.

Rebuilds the run's model from the checkpoint's config, evaluates loss and accuracy on a 1-D or
2-D grid of filter-normalised random directions (all parameters, or one modality's encoder
with ``--modality``) or of the PCA directions of the checkpoint trajectory (``--pca``), and
writes ``RUN/landscapes/<name>.npz``.
"""

from __future__ import annotations

import argparse

HELP = "loss-landscape grid around a run's checkpoint, saved in RUN/landscapes/"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", help="run directory (the --out of msam train)")
    parser.add_argument("--epoch", type=int, default=None, help="checkpoint epoch (latest)")
    parser.add_argument("--steps", type=int, default=41, help="grid points per axis (41)")
    parser.add_argument("--span", type=float, default=1.0, help="grid covers [-span, span] (1.0)")
    parser.add_argument(
        "--modality", default=None, help="perturb only this modality's encoder (or 'fusion')"
    )
    parser.add_argument("--pca", action="store_true", help="PCA directions of the trajectory")
    parser.add_argument("--dims", type=int, choices=(1, 2), default=2, help="1-D or 2-D (2)")
    parser.add_argument("--seed", type=int, default=0, help="direction and subset seed (0)")
    parser.add_argument(
        "--norm", default="filter", help="direction scaling: filter (default), layer, none"
    )
    parser.add_argument(
        "--ignore", default="biasbn", help="biasbn (default: biases/norm layers fixed) or none"
    )
    parser.add_argument("--split", default="train", help="evaluation split (train)")
    parser.add_argument("--n-eval", type=int, default=1024, help="evaluation samples (1024)")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N")
    parser.add_argument("--name", default=None, help="file name without .npz (automatic)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from msam_core.landscape import landscape_for_run, load_landscape

    path = landscape_for_run(
        args.run,
        epoch=args.epoch,
        steps=args.steps,
        span=args.span,
        modality=args.modality,
        pca=args.pca,
        dims=args.dims,
        seed=args.seed,
        norm=args.norm,
        ignore=args.ignore,
        split=args.split,
        n_eval=args.n_eval,
        device=args.device,
        name=args.name,
        progress=not args.quiet,
    )
    result = load_landscape(path)
    print(
        f"wrote {path}: {result.subspace} {result.dims}-D grid of {result.steps} points per axis "
        f"at epoch {result.epoch}; loss at the weights {result.center_loss:.4f}, "
        f"range {result.loss.min():.4f} .. {result.loss.max():.4f}"
    )
    if result.explained_variance is not None:
        shares = ", ".join(f"{v:.1%}" for v in result.explained_variance)
        print(f"PCA directions explain {shares} of the trajectory's variance")
    return 0
