"""Built-in ``msam`` commands, one module each (see :mod:`msam_core.cli` for the convention)."""
