"""Store notebooks without outputs: strip outputs, execution counts and saved widget state.

Outputs of a teaching notebook are large (plotly JS, widget state), differ on every run and
hide real changes in review; the notebooks are executed by the tests instead.

    python tools/strip_notebooks.py             # strip notebooks/*.ipynb in place
    python tools/strip_notebooks.py --check     # exit 1 listing notebooks that hold outputs
    python tools/strip_notebooks.py a.ipynb ... # only these files
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parent.parent
# Notebook-level metadata a front end writes while running; it is state, not content.
VOLATILE_METADATA = ("widgets", "varInspector", "toc", "execution")


def problems(nb: nbformat.NotebookNode) -> list[str]:
    """What makes ``nb`` not clean: cells with outputs or counts, stored widget state."""
    found = []
    for index, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        if cell.get("outputs"):
            found.append(f"cell {index} has outputs")
        if cell.get("execution_count") is not None:
            found.append(f"cell {index} has an execution count")
        if "execution" in cell.get("metadata", {}):
            found.append(f"cell {index} has execution timing metadata")
    for key in VOLATILE_METADATA:
        if key in nb.metadata:
            found.append(f"notebook metadata holds {key!r}")
    return found


def strip(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """``nb`` with every output, execution count and volatile metadata removed (in place)."""
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
        cell.get("metadata", {}).pop("execution", None)
    for key in VOLATILE_METADATA:
        nb.metadata.pop(key, None)
    return nb


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="*", type=Path, help="notebooks (default notebooks/*)")
    parser.add_argument("--check", action="store_true", help="report, do not write; exit 1")
    args = parser.parse_args(argv)
    paths = args.paths or sorted((ROOT / "notebooks").glob("*.ipynb"))
    dirty = []
    for path in paths:
        nb = nbformat.read(path, as_version=4)
        found = problems(nb)
        if not found:
            continue
        dirty.append(path)
        if args.check:
            print(f"{path}: " + "; ".join(found))
        else:
            nbformat.write(strip(nb), path)
            print(f"stripped {path}")
    if args.check and dirty:
        print(f"{len(dirty)} notebook(s) hold outputs; run: python tools/strip_notebooks.py")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
