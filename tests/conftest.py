"""Test-wide settings."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(scope="session", autouse=True)
def one_thread() -> Iterator[None]:
    """One intra-op thread: the test tensors are tiny, and on a busy 2-core machine a second thread's
    synchronisation costs ten times the compute."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session", autouse=True)
def wandb_offline() -> Iterator[None]:
    """wandb stays offline in tests, also on a machine logged in to wandb (no network at test time)."""
    mode = os.environ.get("WANDB_MODE")
    os.environ["WANDB_MODE"] = "offline"
    yield
    if mode is None:
        os.environ.pop("WANDB_MODE", None)
    else:
        os.environ["WANDB_MODE"] = mode
