"""``msam config``: every training config key with its default and what it does.

``msam config`` lists them all; ``msam config lr rho`` only those; ``msam config --yaml``
prints the defaults as a YAML file to start a ``--config`` from.
"""

from __future__ import annotations

import argparse

HELP = "every config key with its default and a one-line description (--yaml: a config file)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("keys", nargs="*", help="only these keys (default: all)")
    parser.add_argument(
        "--yaml", action="store_true", help="print the defaults as a YAML config file"
    )
    parser.add_argument("--quiet", action="store_true", help="the table only, without the hint")


def _show(value: object) -> str:
    """A default as it would be typed in a YAML config (null, true, 0.05, [], {})."""
    import json

    return json.dumps(value)


def describe(keys: list[str] | None = None) -> str:
    """The table ``msam config`` prints: key, default, description, one line each."""
    from msam_core.config import DESCRIPTIONS, TrainConfig, _check_keys

    defaults = TrainConfig().to_dict()
    chosen = list(keys) if keys else list(defaults)
    _check_keys(chosen)  # KeyError with "did you mean" for a misspelt key
    width = max(len(k) for k in chosen)
    shown = {k: _show(defaults[k]) for k in chosen}
    value_width = min(12, max(len(v) for v in shown.values()))
    lines = [f"{'key':<{width}}  {'default':<{value_width}}  description"]
    lines += [f"{k:<{width}}  {shown[k]:<{value_width}}  {DESCRIPTIONS[k]}" for k in chosen]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    if args.yaml:
        import yaml

        from msam_core.config import TrainConfig

        print(yaml.safe_dump(TrainConfig().to_dict(), sort_keys=False), end="")
        return 0
    print(describe(args.keys))
    if not args.quiet:
        print("\nSet any key with --key value (msam train --lr 0.1), or in a --config YAML file.")
    return 0
