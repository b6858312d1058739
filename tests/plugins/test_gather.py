from __future__ import annotations

import threading
from typing import Any

import numpy as np
import pytest
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

import fewlabel.plugins.gather as gather_module
from fewlabel.plugins.gather import Embeddings, gather_embeddings, merge_embeddings


class ToyDataset(Dataset):
    """Sample i has input [i, 2i] and label i % 3."""

    def __init__(self, n: int = 10) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        return {"input": torch.tensor([i, 2.0 * i]), "label": torch.tensor(i % 3), "index": torch.tensor(i)}


class Affine(nn.Module):
    """embedding(x) = [x0 + 1, x1 * 3, x0 * x1], in float64 to check the float32 cast."""

    embed_dim = 3

    def __init__(self) -> None:
        super().__init__()
        self.bn = nn.BatchNorm1d(2)  # has train/eval behaviour; its output is unused
        self.scale = nn.Parameter(torch.tensor(3.0))

    def forward(self, x: Tensor) -> Tensor:
        self.bn(x)
        assert not torch.is_grad_enabled()
        return torch.stack([x[:, 0] + 1, x[:, 1] * self.scale, x[:, 0] * x[:, 1]], dim=1).double()


def expected(indices: np.ndarray) -> np.ndarray:
    i = indices.astype(np.float64)
    return np.stack([i + 1, 6 * i, 2 * i * i], axis=1).astype(np.float32)


def test_shuffled_loader_returns_dataset_order() -> None:
    loader = DataLoader(ToyDataset(10), batch_size=3, shuffle=True, generator=torch.Generator().manual_seed(0))
    out = gather_embeddings(Affine(), loader)
    assert isinstance(out, Embeddings) and len(out) == 10
    assert out.embeddings.dtype == np.float32 and out.embeddings.flags.c_contiguous
    assert out.labels.dtype == np.int64 and out.indices.dtype == np.int64
    np.testing.assert_array_equal(out.indices, np.arange(10))
    np.testing.assert_array_equal(out.labels, np.arange(10) % 3)
    np.testing.assert_array_equal(out.embeddings, expected(np.arange(10)))


def test_padding_duplicates_overwrite_and_unseen_rows_are_dropped() -> None:
    ds = ToyDataset(10)
    # a rank's shard with DistributedSampler-style padding: 7 and 1 repeat, even rows never seen
    loader = DataLoader(ds, batch_size=2, sampler=[7, 1, 3, 9, 5, 7, 1])
    out = gather_embeddings(Affine(), loader)
    np.testing.assert_array_equal(out.indices, [1, 3, 5, 7, 9])
    np.testing.assert_array_equal(out.embeddings, expected(out.indices))


def test_missing_label_key_gives_minus_one() -> None:
    out = gather_embeddings(Affine(), DataLoader(ToyDataset(4), batch_size=4), label_key="target")
    np.testing.assert_array_equal(out.labels, [-1, -1, -1, -1])


def test_training_modes_restored_also_on_error() -> None:
    enc = Affine()
    enc.train()
    enc.bn.eval()  # a deliberately frozen submodule must stay in eval
    gather_embeddings(enc, DataLoader(ToyDataset(4), batch_size=2))
    assert enc.training and not enc.bn.training

    class Broken(Affine):
        def forward(self, x: Tensor) -> Tensor:
            raise RuntimeError("boom")

    broken = Broken().train()
    with pytest.raises(RuntimeError, match="boom"):
        gather_embeddings(broken, DataLoader(ToyDataset(4), batch_size=2))
    assert broken.training and broken.bn.training


def test_non_finite_embeddings_raise_with_row_count() -> None:
    class Nan(Affine):
        def forward(self, x: Tensor) -> Tensor:
            out = super().forward(x)
            out[x[:, 0] < 3, 1] = float("nan")
            out[x[:, 0] == 5, 0] = float("inf")
            return out

    with pytest.raises(ValueError, match="non-finite embeddings .* for 4 of 10 rows"):
        gather_embeddings(Nan(), DataLoader(ToyDataset(10), batch_size=4))


def test_empty_loader_and_bad_output_raise() -> None:
    with pytest.raises(ValueError, match="no batches"):
        gather_embeddings(Affine(), DataLoader(ToyDataset(0), batch_size=2))
    with pytest.raises(ValueError, match=r"\(2, D\)"):
        gather_embeddings(nn.Identity(), [{"input": torch.zeros(2, 3, 4), "index": torch.tensor([0, 1])}])


def test_two_shard_merge_equals_single_process() -> None:
    ds = ToyDataset(11)
    full = gather_embeddings(Affine(), DataLoader(ds, batch_size=4))
    # DistributedSampler(num_replicas=2, shuffle=False) splits 11 into 0,2,..,10 and 1,3,..,9,0 (padded)
    shards = [
        gather_embeddings(Affine(), DataLoader(ds, batch_size=4, sampler=list(range(0, 11, 2)))),
        gather_embeddings(Affine(), DataLoader(ds, batch_size=4, sampler=[*range(1, 11, 2), 0])),
    ]
    # all-gather pads the shorter shard with index -1 rows; those must vanish
    padded = Embeddings(
        np.concatenate([shards[1].embeddings, np.full((1, 3), 99.0, np.float32)]),
        np.concatenate([shards[1].labels, [-1]]),
        np.concatenate([shards[1].indices, [-1]]),
    )
    for parts in ([shards[0], shards[1]], [padded, shards[0]]):
        merged = merge_embeddings(parts)
        np.testing.assert_array_equal(merged.indices, full.indices)
        np.testing.assert_array_equal(merged.labels, full.labels)
        np.testing.assert_array_equal(merged.embeddings, full.embeddings)
    with pytest.raises(ValueError, match="at least one"):
        merge_embeddings([])


class _ThreadGroup:
    """A fake process group: ranks are threads, ``all_gather`` stacks every rank's tensor."""

    def __init__(self, world_size: int) -> None:
        self.barrier = threading.Barrier(world_size, timeout=30)
        self.slots: list[Tensor | None] = [None] * world_size


class FakeStrategy:
    """The two methods of a Lightning strategy that ``gather_embeddings`` uses, over a thread group."""

    root_device = torch.device("cpu")

    def __init__(self, group: _ThreadGroup, rank: int) -> None:
        self.group, self.rank, self.world_size = group, rank, len(group.slots)
        self.calls = 0

    def all_gather(self, t: Tensor) -> Tensor:
        self.calls += 1
        self.group.slots[self.rank] = t.clone()
        self.group.barrier.wait()
        out = torch.stack([s for s in self.group.slots if s is not None])
        self.group.barrier.wait()  # nobody overwrites a slot before every rank has read it
        return out


def _run_ranks(samplers: list[list[int]], n: int, **kwargs: Any) -> list[Embeddings]:
    group = _ThreadGroup(len(samplers))
    results: list[Any] = [None] * len(samplers)

    def rank(r: int) -> None:
        loader = DataLoader(ToyDataset(n), batch_size=4, sampler=samplers[r])
        try:
            results[r] = gather_embeddings(Affine(), loader, strategy=FakeStrategy(group, r), **kwargs)
        except BaseException as err:  # noqa: BLE001 - surfaced by the assertion below
            results[r] = err
            group.barrier.abort()

    threads = [threading.Thread(target=rank, args=(r,)) for r in range(len(samplers))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for res in results:
        if isinstance(res, BaseException):
            raise res
    return results


@pytest.mark.parametrize("chunk_bytes", [None, 4 * 3 * 2])  # default, and all-gather blocks of 2 rows
def test_strategy_all_gather_path_with_two_thread_ranks(monkeypatch: pytest.MonkeyPatch, chunk_bytes: int | None) -> None:
    """The multi-process path: two ranks (threads) with DistributedSampler-style padded shards."""
    if chunk_bytes is not None:
        monkeypatch.setattr(gather_module, "_CHUNK_BYTES", chunk_bytes)
    # 9 samples on 2 ranks: 0,2,4,6,8 and 1,3,5,7 + the padding duplicate 0
    for out in _run_ranks([[0, 2, 4, 6, 8], [1, 3, 5, 7, 0]], 9):
        np.testing.assert_array_equal(out.indices, np.arange(9))
        np.testing.assert_array_equal(out.labels, np.arange(9) % 3)
        np.testing.assert_array_equal(out.embeddings, expected(np.arange(9)))
        assert out.embeddings.dtype == np.float32 and out.embeddings.flags.c_contiguous
    # uneven shards (the second is shorter, so the all-gather pads it) and float16 memmap output
    outs = _run_ranks([[0, 1, 2, 3, 4, 5], [6, 7]], 8, buffer_dtype="float16", max_ram_bytes=0)
    for out in outs:
        assert isinstance(out.embeddings, np.memmap) and out.embeddings.dtype == np.float16
        np.testing.assert_array_equal(out.indices, np.arange(8))
        np.testing.assert_allclose(out.embeddings, expected(np.arange(8)), rtol=1e-3)


def test_non_finite_check_runs_after_the_all_gather_on_every_rank() -> None:
    class Nan(Affine):
        def forward(self, x: Tensor) -> Tensor:
            out = super().forward(x)
            out[x[:, 0] == 5, 0] = float("nan")
            return out

    group = _ThreadGroup(2)
    errors: list[Any] = [None, None]

    def rank(r: int) -> None:
        loader = DataLoader(ToyDataset(6), batch_size=4, sampler=[[0, 2, 4], [1, 3, 5]][r])
        try:
            gather_embeddings(Nan(), loader, strategy=FakeStrategy(group, r))
        except ValueError as err:
            errors[r] = err

    threads = [threading.Thread(target=rank, args=(r,)) for r in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(err is not None and "for 1 of 6 rows" in str(err) for err in errors)


def _loader(n: int = 37, **kwargs: Any) -> DataLoader:
    return DataLoader(ToyDataset(n), batch_size=5, shuffle=True, generator=torch.Generator().manual_seed(1), **kwargs)


def test_memmap_buffer_equals_in_ram(tmp_path: Any) -> None:
    ram = gather_embeddings(Affine(), _loader())
    assert type(ram.embeddings) is np.ndarray
    disk = gather_embeddings(Affine(), _loader(), max_ram_bytes=16, tmp_dir=str(tmp_path))  # tiny budget
    assert isinstance(disk.embeddings, np.memmap)
    assert disk.embeddings.dtype == np.float32 and disk.embeddings.flags.c_contiguous
    np.testing.assert_array_equal(disk.embeddings, ram.embeddings)
    np.testing.assert_array_equal(disk.labels, ram.labels)
    np.testing.assert_array_equal(disk.indices, ram.indices)
    assert list(tmp_path.iterdir()) == []  # the temporary file is anonymous: nothing is left behind
    # a budget the buffer fits in stays in RAM
    assert type(gather_embeddings(Affine(), _loader(), max_ram_bytes=1 << 20).embeddings) is np.ndarray


def test_memmap_buffer_with_a_sharded_loader_and_no_len() -> None:
    ds = ToyDataset(20)
    shard = gather_embeddings(Affine(), DataLoader(ds, batch_size=3, sampler=[15, 3, 9, 3, 11]), max_ram_bytes=0)
    np.testing.assert_array_equal(shard.indices, [3, 9, 11, 15])
    np.testing.assert_array_equal(shard.embeddings, expected(shard.indices))

    class NoLen:  # an iterable without .dataset: the buffer grows by doubling
        def __iter__(self):  # type: ignore[no-untyped-def]
            for start in (0, 4, 8, 12, 16):
                idx = torch.arange(start, start + 4)
                yield {"input": torch.stack([idx.double(), 2.0 * idx], dim=1).float(), "index": idx}

    for budget in (None, 0):
        out = gather_embeddings(Affine(), NoLen(), max_ram_bytes=budget)
        np.testing.assert_array_equal(out.indices, np.arange(20))
        np.testing.assert_array_equal(out.embeddings, expected(np.arange(20)))
        assert out.embeddings.shape == (20, 3) and out.embeddings.flags.c_contiguous


def test_float16_buffer_is_close_to_float32() -> None:
    full = gather_embeddings(Affine(), _loader())
    half = gather_embeddings(Affine(), _loader(), buffer_dtype="float16")
    assert half.embeddings.dtype == np.float16 and half.embeddings.nbytes * 2 == full.embeddings.nbytes
    np.testing.assert_allclose(half.embeddings.astype(np.float32), full.embeddings, rtol=1e-3, atol=1e-3)
    np.testing.assert_array_equal(half.indices, full.indices)
    with pytest.raises(ValueError, match="buffer_dtype must be one of"):
        gather_embeddings(Affine(), _loader(), buffer_dtype="int8")


def test_float16_overflow_is_reported_as_non_finite() -> None:
    class Huge(Affine):
        def forward(self, x: Tensor) -> Tensor:
            return super().forward(x) * 1e4  # 6 * i * 1e4 > 65504 from i = 2

    with pytest.raises(ValueError, match="non-finite embeddings .* for 8 of 10 rows"):
        gather_embeddings(Huge(), DataLoader(ToyDataset(10), batch_size=4), buffer_dtype="float16")


def test_no_full_size_copy_when_every_row_is_seen() -> None:
    """The preallocated buffer itself is returned (no concatenation, no trailing copy)."""
    out = gather_embeddings(Affine(), _loader())
    assert out.embeddings.flags.owndata and out.embeddings.base is None
