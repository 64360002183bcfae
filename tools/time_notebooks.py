"""Execute every notebook top to bottom and print its wall time and executed size.

``MSAM_SMOKE=1 python tools/time_notebooks.py`` times smoke mode (what CI runs),
``MSAM_SMOKE=0 python tools/time_notebooks.py`` the full notebooks; each runs in a temporary
folder, so the runs it writes are thrown away.  The README's notebook timings come from here.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="notebook names (default: all)")
    parser.add_argument("--timeout", type=int, default=3600, help="seconds per cell (3600)")
    args = parser.parse_args()
    paths = sorted((ROOT / "notebooks").glob("*.ipynb"))
    if args.names:
        paths = [p for p in paths if any(p.name.startswith(n) for n in args.names)]
    for path in paths:
        nb = nbformat.read(path, as_version=4)
        with tempfile.TemporaryDirectory() as folder:
            client = NotebookClient(
                nb,
                timeout=args.timeout,
                kernel_name="python3",
                resources={"metadata": {"path": folder}},
            )
            started = time.perf_counter()
            client.execute()
            elapsed = time.perf_counter() - started
            saved = Path(folder) / path.name
            nbformat.write(nb, saved)
            size = saved.stat().st_size
        print(f"{path.name}: {elapsed:.0f} s, {size / 1e6:.2f} MB executed", flush=True)


if __name__ == "__main__":
    main()
