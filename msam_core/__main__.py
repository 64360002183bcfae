"""``python -m msam_core <command> ...`` is ``msam <command> ...`` (how ``torchrun -m msam_core
train ...`` starts every rank of a run)."""

import sys

from msam_core.cli import entry

sys.exit(entry())
