"""Recipes (UnFuSeD, SimCLRv2): whole pipelines composed from fewlabel modules, callbacks and datamodules.

This layer sits above everything else; ``fewlabel.plugins`` does not import it.
"""

from __future__ import annotations

from fewlabel.plugins.recipes.build import create_datamodule, list_datamodules, register_datamodule
from fewlabel.plugins.recipes.config import load_config
from fewlabel.plugins.recipes.lightning_cli import LIGHTNING_SUBCOMMANDS, lightning_cli
from fewlabel.plugins.recipes.simclrv2 import run_simclrv2
from fewlabel.plugins.recipes.unfused import run_unfused
from fewlabel.plugins.recipes.validate import RecipeError, check_config

__all__ = [
    "LIGHTNING_SUBCOMMANDS",
    "RecipeError",
    "check_config",
    "create_datamodule",
    "lightning_cli",
    "list_datamodules",
    "load_config",
    "register_datamodule",
    "run_simclrv2",
    "run_unfused",
]
