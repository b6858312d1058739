"""The ``fewlabel`` command.

- ``fewlabel fit|validate|test|predict --config FILE [...]``: Lightning's ``LightningCLI`` over any module and
  datamodule named by ``class_path`` (:mod:`fewlabel.plugins.recipes.lightning_cli`; ``examples/configs/``);
- ``fewlabel run unfused|simclrv2 [--config FILE] [--output DIR] [--print_config] [--verbose]
  [--key VALUE ...]``: run a recipe end to end (UnFuSeD, :mod:`fewlabel.plugins.recipes.unfused`; SimCLRv2,
  :mod:`fewlabel.plugins.recipes.simclrv2`);
- ``fewlabel fewshot --checkpoint CKPT [--config FILE] [--head protonet ...] [--ways 5] [--shots 1 5]
  [--queries 15] [--episodes 1000] [--print_config] [--key VALUE ...]``: few-shot episode accuracy of a checkpoint's
  encoder on the configuration's data (see :mod:`fewlabel.plugins.recipes.fewshot`).

fewlabel's own errors (a bad configuration, data that do not fit it, a busy or stale run folder) are
printed as one line without a traceback; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import yaml

from fewlabel.plugins.heads.registry import list_few_shot_heads
from fewlabel.plugins.recipes.build import DATAMODULES, LOGGERS, set_verbose
from fewlabel.plugins.recipes.lightning_cli import LIGHTNING_SUBCOMMANDS, lightning_cli
from fewlabel.plugins.recipes.config import load_config
from fewlabel.plugins.recipes.fewshot import (
    CENTERS,
    ENCODER_SECTIONS,
    SPLITS,
    format_fewshot_table,
    run_config_path,
    run_fewshot,
)
from fewlabel.plugins.recipes.validate import RecipeError, check_config

RECIPES = ("unfused", "simclrv2")


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
    parser = argparse.ArgumentParser(
        prog="fewlabel", allow_abbrev=False,
        description="Learning from few labels with Lightning. Also: fewlabel fit|validate|test|predict --config "
                    "FILE (Lightning's LightningCLI with class_path / init_args; see examples/configs/).")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run a recipe end to end", allow_abbrev=False,
                         epilog="Any config key can be overridden: --data.root PATH --trainer.devices 2 --seed 1 ...")
    run.add_argument("recipe", choices=RECIPES)
    run.add_argument("--config", help="YAML file merged onto the recipe's defaults (embedded digits data)")
    run.add_argument("--output", help="run folder (default: runs/RECIPE)")
    run.add_argument("--logger", default="wandb", choices=LOGGERS,
                     help="wandb (default): offline, no account needed; online once you are logged in (wandb login)")
    run.add_argument("--recompute", action="store_true",
                     help="delete and recompute stages that this --output folder holds with other settings")
    run.add_argument("--debug", action="store_true", help="show the traceback of fewlabel's own errors")
    run.add_argument("--print_config", action="store_true", help="print the checked configuration and exit")
    run.add_argument("--verbose", action="store_true",
                     help="Lightning's own progress bars and messages (default: one bar per stage)")
    few = sub.add_parser("fewshot", help="few-shot episode accuracy of a checkpoint's encoder", allow_abbrev=False,
                         epilog="Any config key can be overridden: --data.root PATH --data.name image_folder ...")
    few.add_argument("--checkpoint", required=True, help="a stage checkpoint, e.g. runs/unfused/student/final.ckpt")
    few.add_argument("--config", help="the recipe YAML (default: the run folder's config.yaml next to the "
                                      "checkpoint's stage folder, else the packaged digits defaults)")
    few.add_argument("--head", nargs="+", default=["protonet"], choices=list_few_shot_heads(), metavar="HEAD",
                     help=f"few-shot heads, any of {list_few_shot_heads()} (default: protonet)")
    few.add_argument("--ways", type=int, default=5, help="classes per episode (default: 5)")
    few.add_argument("--shots", type=int, nargs="+", default=[1, 5], help="support samples per class (default: 1 5)")
    few.add_argument("--queries", type=int, default=15, help="query samples per class (default: 15)")
    few.add_argument("--episodes", type=int, default=1000, help="episodes per head and shot count (default: 1000)")
    few.add_argument("--seed", type=int, default=0, help="seed of the episode draws (default: 0)")
    few.add_argument("--split", default="test", choices=SPLITS, help="which labeled split (default: test)")
    few.add_argument("--encoder", default="auto", choices=("auto", *ENCODER_SECTIONS),
                     help="the config section whose encoder spec fits the checkpoint (default: auto)")
    few.add_argument("--center", default="pool", choices=CENTERS,
                     help="SimpleShot's centring: the unlabeled pool's mean embedding or the support mean")
    few.add_argument("--device", default="cpu", help="torch device of the encoder and heads (default: cpu)")
    few.add_argument("--debug", action="store_true", help="show the traceback of fewlabel's own errors")
    few.add_argument("--print_config", action="store_true", help="print the checked configuration and exit")
    return parser


def _fewshot(args: argparse.Namespace, extra: Sequence[str]) -> None:
    path = args.config if args.config is not None else run_config_path(args.checkpoint)
    config = load_config("unfused", path, _overrides(extra))
    if args.print_config:
        _print_config(config, "unfused")
        return
    print(f"[fewlabel] config: {path if path is not None else 'packaged digits defaults'}", flush=True)
    result = run_fewshot(args.checkpoint, config, heads=args.head, n_way=args.ways, shots=args.shots,
                         n_query=args.queries, num_episodes=args.episodes, seed=args.seed, split=args.split,
                         encoder=args.encoder, center=args.center, device=args.device)
    print(format_fewshot_table(result), flush=True)
    print(f"[fewlabel] {result['seconds']:.1f} s", flush=True)


def _print_config(config: dict, recipe: str) -> None:
    """Check ``config`` as a run would (jsonargparse against the constructors), then print it as YAML."""
    check_config(config, DATAMODULES, recipe)
    print(yaml.safe_dump(config, sort_keys=False), end="")


def main(argv: Sequence[str] | None = None) -> int:
    command_line = argv is None
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in LIGHTNING_SUBCOMMANDS:
        lightning_cli(None if command_line else argv)  # None: LightningCLI reads sys.argv itself
        return 0
    args, extra = build_parser().parse_known_args(argv)
    try:
        if args.command == "fewshot":
            _fewshot(args, extra)
            return 0
        config = load_config(args.recipe, args.config, _overrides(extra))
        if args.print_config:
            _print_config(config, args.recipe)
            return 0
        set_verbose(args.verbose)
        if args.recipe == "simclrv2":
            from fewlabel.plugins.recipes.simclrv2 import run_simclrv2 as run_recipe
        else:
            from fewlabel.plugins.recipes.unfused import run_unfused as run_recipe

        run_recipe(config, args.output or f"runs/{args.recipe}", logger=args.logger, recompute=args.recompute)
    except (RecipeError, FileNotFoundError, FloatingPointError) as err:
        if args.debug:
            raise
        raise SystemExit(f"fewlabel: error: {err}") from None
    return 0


if __name__ == "__main__":
    sys.exit(main())
