"""Optimizers (a registry), schedules (pure functions of the step), EMA and model soups."""

from __future__ import annotations

from fewlabel.plugins.optim.ema import ema_update, momentum_schedule
from fewlabel.plugins.optim.optimizers import (
    OPTIMIZERS,
    build_optimizer,
    check_optimizer,
    create_optimizer,
    list_optimizers,
    register_optimizer,
)
from fewlabel.plugins.optim.schedules import cosine_schedule
from fewlabel.plugins.optim.soups import GreedySoup, greedy_soup, uniform_soup

__all__ = [
    "GreedySoup",
    "OPTIMIZERS",
    "build_optimizer",
    "check_optimizer",
    "cosine_schedule",
    "create_optimizer",
    "ema_update",
    "greedy_soup",
    "list_optimizers",
    "momentum_schedule",
    "register_optimizer",
    "uniform_soup",
]
