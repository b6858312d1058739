from __future__ import annotations

from typing import Any

import pytest

from fewlabel.plugins.distributed import on_rank_zero_then_broadcast


class FakeStrategy:
    """Rank ``rank`` of ``world_size``; ``broadcast`` hands every rank what rank 0 sent (recorded in ``channel``)."""

    def __init__(self, rank: int, world_size: int, channel: list[Any]) -> None:
        self.is_global_zero = rank == 0
        self.world_size = world_size
        self.channel = channel
        self.broadcasts = 0

    def broadcast(self, obj: Any, src: int = 0) -> Any:
        assert src == 0
        self.broadcasts += 1
        if self.is_global_zero:
            self.channel.append(obj)
        return self.channel[-1]


def test_single_process_runs_fn_without_a_broadcast() -> None:
    strategy = FakeStrategy(0, 1, [])
    assert on_rank_zero_then_broadcast(strategy, lambda: 42, what="work") == 42
    assert strategy.broadcasts == 0


def test_single_process_error_propagates_unchanged() -> None:
    def fail() -> None:
        raise ValueError("bad k")

    with pytest.raises(ValueError, match="bad k"):
        on_rank_zero_then_broadcast(FakeStrategy(0, 1, []), fail, what="work")


def test_every_rank_gets_rank_zeros_result_and_fn_runs_once() -> None:
    channel: list[Any] = []
    calls: list[int] = []

    def work() -> dict[str, int]:
        calls.append(1)
        return {"k": 3}

    results = [on_rank_zero_then_broadcast(FakeStrategy(rank, 2, channel), work, what="work") for rank in (0, 1)]
    assert results == [{"k": 3}, {"k": 3}] and calls == [1]


def test_rank_zero_error_reaches_every_rank() -> None:
    channel: list[Any] = []

    def fail() -> None:
        raise ValueError("bad k")

    for rank in (0, 1):
        with pytest.raises(RuntimeError, match="PseudoLabeler: clustering failed on rank 0: bad k") as info:
            on_rank_zero_then_broadcast(FakeStrategy(rank, 2, channel), fail, what="PseudoLabeler: clustering")
        assert isinstance(info.value.__cause__, ValueError)
