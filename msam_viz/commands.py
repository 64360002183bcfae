"""``msam report RUN... --out report.html [--png DIR]``: the HTML report from the command line.

A plug-in of the ``msam`` command (see :mod:`msam_core.cli`), registered through the
``msam.commands`` entry point so msam_core never imports msam_viz.  Exit status: 0 when
everything asked for was written, 1 when the HTML was written but PNGs could not be (no
Chrome/Chromium), 2 for user errors (no such run, not a run directory), printed in one line.
"""

from __future__ import annotations

import argparse
import sys
import warnings

HELP = "write a self-contained HTML report (and PNGs) of one or more runs"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "runs",
        nargs="+",
        metavar="RUN",
        help="run directories, glob patterns ('runs/msam_*') or a folder of runs",
    )
    parser.add_argument(
        "--out", default="report.html", help="HTML file to write (default: report.html)"
    )
    parser.add_argument(
        "--png",
        metavar="DIR",
        default=None,
        help=(
            "also write every figure as PNG into DIR, named <run>__<figure>.png by each run's "
            "label in the report (e.g. synthetic_msam__accuracy.png) and "
            "comparison[_<dataset>]__<figure>.png (needs Chrome/Chromium for kaleido)"
        ),
    )
    parser.add_argument("--title", default=None, help="page title (default: from the runs)")
    parser.add_argument(
        "--smooth",
        type=int,
        default=None,
        metavar="STEPS",
        help="rolling mean over STEPS iterations for the per-step curves",
    )
    parser.add_argument("--quiet", action="store_true", help="print nothing on success")


def run(args: argparse.Namespace) -> int:
    from msam_viz.io import load_runs
    from msam_viz.report import write_report

    if args.smooth is not None and args.smooth < 1:
        raise ValueError(f"--smooth must be a positive number of steps, got {args.smooth}")
    runs = load_runs(args.runs)
    with warnings.catch_warnings():
        # Said once below, with the exit status, rather than also as a Python warning.
        warnings.filterwarnings("ignore", message="PNG export needs", category=RuntimeWarning)
        result = write_report(
            runs, args.out, title=args.title, png_dir=args.png, smooth_steps=args.smooth
        )
    if not args.quiet:
        print(f"wrote {result.html} ({len(runs)} run{'s' if len(runs) != 1 else ''})")
        if result.png_files:
            print(f"wrote {len(result.png_files)} PNG files into {args.png}")
    if result.png_message:
        print(f"msam report: PNGs not written: {result.png_message}", file=sys.stderr)
        return 1
    return 0
