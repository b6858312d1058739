"""The ``fewlabel`` command: ``fewlabel run unfused [--config FILE] [--output DIR] [--key VALUE ...]``.

fewlabel's own errors (a bad configuration, data that do not fit it, a busy or stale run folder) are
printed as one line without a traceback; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from fewlabel.plugins.recipes.build import LOGGERS
from fewlabel.plugins.recipes.config import load_config
from fewlabel.plugins.recipes.validate import RecipeError

RECIPES = ("unfused",)


def _overrides(extra: Sequence[str]) -> list[str]:
    """Turn ``--a.b VALUE`` / ``--a.b=VALUE`` / ``--seed VALUE`` pairs into ``a.b=VALUE`` strings."""
    out, items = [], list(extra)
    while items:
        flag = items.pop(0)
        if not flag.startswith("--") or len(flag) < 3:
            raise SystemExit(f"fewlabel: unrecognised argument {flag!r}; config overrides look like --section.key VALUE")
        key, sep, value = flag[2:].partition("=")
        if not sep:
            if not items:
                raise SystemExit(f"fewlabel: {flag} needs a value")
            value = items.pop(0)
        out.append(f"{key}={value}")
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fewlabel", description="Learning from few labels with Lightning.",
                                     allow_abbrev=False)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run a recipe end to end", allow_abbrev=False,
                         epilog="Any config key can be overridden: --data.root PATH --trainer.devices 2 --seed 1 ...")
    run.add_argument("recipe", choices=RECIPES)
    run.add_argument("--config", help="YAML file merged onto the recipe's defaults (embedded digits data)")
    run.add_argument("--output", default="runs/unfused", help="run folder (default: runs/unfused)")
    run.add_argument("--logger", default="wandb", choices=LOGGERS,
                     help="wandb = offline wandb (default, no account needed)")
    run.add_argument("--recompute", action="store_true",
                     help="delete and recompute stages that this --output folder holds with other settings")
    run.add_argument("--debug", action="store_true", help="show the traceback of fewlabel's own errors")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args, extra = build_parser().parse_known_args(argv)
    try:
        config = load_config(args.recipe, args.config, _overrides(extra))
        from fewlabel.plugins.recipes.unfused import run_unfused

        run_unfused(config, args.output, logger=args.logger, recompute=args.recompute)
    except (RecipeError, FileNotFoundError, FloatingPointError) as err:
        if args.debug:
            raise
        raise SystemExit(f"fewlabel: error: {err}") from None
    return 0


if __name__ == "__main__":
    sys.exit(main())
