from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

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


def test_strategy_all_gather_path_with_fake_two_rank_strategy() -> None:
    """The multi-process path, with a fake strategy whose all_gather stacks a second rank's tensors."""
    ds = ToyDataset(9)
    other = gather_embeddings(Affine(), DataLoader(ds, batch_size=4, sampler=[1, 3, 5, 7]))
    other_tensors = iter(
        [torch.tensor(len(other)), torch.from_numpy(other.embeddings), torch.from_numpy(other.labels),
         torch.from_numpy(other.indices)]
    )

    class FakeStrategy:
        world_size = 2
        root_device = torch.device("cpu")

        def all_gather(self, t: Tensor) -> Tensor:
            theirs = next(other_tensors)
            if theirs.ndim and theirs.shape[0] < t.shape[0]:  # pad like the real rank would
                pad = torch.full((t.shape[0] - theirs.shape[0], *theirs.shape[1:]), -1, dtype=theirs.dtype)
                theirs = torch.cat([theirs, pad])
            return torch.stack([t, theirs])

    mine = DataLoader(ds, batch_size=4, sampler=[0, 2, 4, 6, 8])
    out = gather_embeddings(Affine(), mine, strategy=FakeStrategy())
    np.testing.assert_array_equal(out.indices, np.arange(9))
    np.testing.assert_array_equal(out.embeddings, expected(np.arange(9)))
