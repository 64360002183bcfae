"""``msam train``: one run from a config file, flags and ``--key value`` overrides."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

HELP = "train one run (--config file.yaml, --key value for any config key)"
EXTRA_ARGS = True  # unknown --key value pairs are config overrides


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML or JSON config file (a run's config.json works)")
    parser.add_argument("--dataset", help="dataset name (default: synthetic)")
    parser.add_argument("--method", help="joint, sam, msam, ... (default: msam)")
    parser.add_argument("--epochs", help="number of epochs")
    parser.add_argument("--seed", help="seed for data, initial weights and data order")
    parser.add_argument("--device", help="auto (default), cpu, cuda or cuda:N")
    parser.add_argument(
        "--data-root",
        help="folder holding a user-supplied dataset (cremad, ave, kinetics_sounds, avmnist)",
    )
    parser.add_argument("--out", help="run directory (default: runs/<method>_<dataset>_seed<seed>)")
    parser.add_argument(
        "--resume",
        nargs="?",
        const=True,
        default=False,
        metavar="RUN",
        help="continue the killed or finished run in RUN (or in --out) from its last checkpoint",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing run in --out")
    parser.add_argument("--quiet", action="store_true", help="no progress bar or epoch lines")
    parser.add_argument(
        "--tensorboard",
        action="store_true",
        help="also write the records for TensorBoard in RUN/tensorboard/ (config log_to)",
    )
    parser.add_argument(
        "--nproc",
        type=int,
        default=1,
        help="processes for this one run (torch.distributed: one per GPU, or gloo on CPU "
        "cores); batch_size stays the global batch. Several machines: torchrun "
        "--nnodes ... -m msam_core train ...",
    )
    parser.epilog = (
        "Any config key can be set as --key value, e.g. --lr 0.1 --rho 0.05 --fusion gated "
        "--dataset_options.noise 0.5; see msam_core.config.TrainConfig for every key."
    )


def run(args: argparse.Namespace) -> int:
    from msam_core.config import parse_overrides
    from msam_core.launch import launched_here, restarted_attempt, run_processes
    from msam_core.train import train

    overrides = parse_overrides(list(getattr(args, "extra", [])))
    for key in ("dataset", "method", "epochs", "seed", "device"):
        value = getattr(args, key)
        if value is not None:
            overrides[key] = value
    if args.tensorboard:
        overrides["log_to"] = "tensorboard"
    if args.data_root is not None:
        # a path, never YAML: "2024", "on" or "data #1" must stay the folder's name
        overrides["dataset_options.data_root"] = Path(args.data_root)
    out = args.out
    resume = args.resume is not False
    if isinstance(args.resume, str):
        if out is not None and out != args.resume:
            raise ValueError(f"--resume {args.resume} and --out {out} name different runs")
        out = args.resume
    config, overwrite = args.config, args.overwrite
    if restarted_attempt(out):  # torchrun --max-restarts: continue, never start over
        resume, config, overwrite = True, None, False
    if resume and config:
        raise ValueError("--resume reads the run's own config.json; drop --config")
    if args.nproc < 1:
        raise ValueError(f"--nproc must be at least 1, got {args.nproc}")
    if args.nproc > 1 and not launched_here():
        return run_processes(
            args.nproc,
            args.argv,
            config=config,
            overrides=overrides,
            out=out,
            resume=resume,
            overwrite=overwrite,
        )
    path = train(
        config,
        out=out,
        resume=resume,
        overwrite=overwrite,
        quiet=args.quiet,
        **overrides,
    )
    if os.environ.get("RANK", "0") == "0":  # one line per run, not one per rank
        print(f"run written to {path}")
    return 0
