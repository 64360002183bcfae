"""``msam compare``: every (method, seed) on one dataset, then one results table (resumable)."""

from __future__ import annotations

import argparse
import sys

HELP = "train every (method, seed) on one dataset and tabulate them; re-run to resume"
EXTRA_ARGS = True  # unknown --key value pairs are config overrides for every run


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", help="dataset name (default: synthetic, or --config's)")
    parser.add_argument(
        "--methods",
        default="joint,sam,ogm_ge,agm,msam",
        help="comma list of method specs (default: joint,sam,ogm_ge,agm,msam); a spec may set "
        "config keys or method options for its row: msam[rho=0.5],msam[perturb=all]",
    )
    parser.add_argument(
        "--no-alone",
        dest="alone",
        action="store_false",
        help="do not train each modality alone (no alone/headroom/recovered columns)",
    )
    parser.add_argument(
        "--seeds",
        default="3",
        help="a count N (seeds 0..N-1, default 3) or a comma list of seeds, e.g. 0,5,7",
    )
    parser.add_argument(
        "--out",
        required=True,
        help="comparison folder; each run goes to OUT/<method>/seed<k>, tables to OUT/results.*",
    )
    parser.add_argument("--config", help="YAML or JSON config file shared by every run")
    parser.add_argument("--epochs", help="number of epochs of every run")
    parser.add_argument("--device", help="auto (default), cpu, cuda or cuda:N")
    parser.add_argument(
        "--overwrite", action="store_true", help="train every run again, even those in --out"
    )
    parser.add_argument(
        "--verbose", action="store_true", help="also show each run's progress bar and epoch lines"
    )
    parser.add_argument(
        "--quiet", action="store_true", help="no progress bar (runs done / total); the table only"
    )
    parser.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="runs at once: N local processes sharing the CPU threads (default 1: one after "
        "the other in this process); with --executor ray and no --ray-address, the CPUs of "
        "the local Ray instance",
    )
    parser.add_argument(
        "--executor",
        choices=("local", "ray"),
        default="local",
        help="local (default) or ray: each run a Ray task; --out must be a folder every node "
        "can write (needs pip install 'msam[ray]')",
    )
    parser.add_argument(
        "--ray-address",
        help="a running Ray cluster (host:port, ray://host:port or auto); default: start a "
        "local Ray instance",
    )
    parser.add_argument(
        "--gpus-per-run", type=float, default=0.0, help="GPUs each Ray task asks for (e.g. 0.5)"
    )
    parser.epilog = (
        "Runs already finished in --out are reused and interrupted ones resumed, so re-running "
        "the same command after an interruption trains only what is missing. Any config key "
        "can be set as --key value for every run, e.g. --lr 0.1 --fusion gated "
        "--method_options.ogm_alpha 0.5."
    )


def run(args: argparse.Namespace) -> int:
    from msam_core.executors import start_workers

    # the workers' fork server imports torch while this process does (2 s and more): started
    # here, before the imports below, the first runs need not wait for it
    start_workers(args.executor, args.jobs, preload=["msam_core.compare"])
    from msam_core.compare import RESULTS_CSV, RESULTS_MD, RUNS_CSV, compare, markdown_table
    from msam_core.config import parse_overrides

    overrides = parse_overrides(list(getattr(args, "extra", [])))
    for key in ("epochs", "device"):
        value = getattr(args, key)
        if value is not None:
            overrides[key] = value
    summary = compare(
        args.dataset,
        args.methods,
        args.seeds,
        args.out,
        config=args.config,
        alone=args.alone,
        overwrite=args.overwrite,
        quiet=not args.verbose or args.quiet,
        progress=not args.quiet,
        jobs=args.jobs,
        executor=args.executor,
        ray_address=args.ray_address,
        gpus_per_run=args.gpus_per_run,
        **overrides,
    )
    print()
    print(markdown_table(summary), end="")
    print(f"\nresults written to {args.out}/{RESULTS_CSV} and {args.out}/{RESULTS_MD}")
    failed = int(summary["failed"].sum())
    if failed:
        print(
            f"{failed} run(s) failed (their errors are in {args.out}/{RUNS_CSV}); "
            "re-run the same command to retry them",
            file=sys.stderr,
        )
        return 1
    return 0
