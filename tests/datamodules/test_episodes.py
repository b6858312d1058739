"""EpisodeSampler: N-way K-shot Q-query index lists, seeded per epoch, as a DataLoader batch sampler."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from fewlabel.datamodules import DigitsDataModule, EpisodeSampler, SampleView, collate_dict
from fewlabel.plugins.evaluation import sample_episodes

LABELS = np.repeat(np.arange(7), [9, 9, 9, 9, 9, 9, 4])  # class 6 cannot give 2 + 3 samples


def test_each_episode_is_support_then_query_of_n_distinct_classes() -> None:
    sampler = EpisodeSampler(LABELS, n_way=5, k_shot=2, n_query=3, num_episodes=30, seed=1)
    assert len(sampler) == 30 and sampler.support_size == 10 and sampler.query_size == 15
    episodes = list(sampler)
    assert len(episodes) == 30
    for episode in episodes:
        assert len(episode) == 25 and len(set(episode)) == 25  # support and query disjoint
        support, query = np.array(episode[:10]), np.array(episode[10:])
        s = LABELS[support].reshape(5, 2)
        q = LABELS[query].reshape(5, 3)
        assert (s == s[:, :1]).all() and (q == q[:, :1]).all() and (s[:, 0] == q[:, 0]).all()
        assert len(set(s[:, 0])) == 5 and 6 not in s


def test_seeded_and_deterministic_per_epoch() -> None:
    a = EpisodeSampler(LABELS, 3, 1, 2, 8, seed=4)
    b = EpisodeSampler(torch.tensor(LABELS), 3, 1, 2, 8, seed=4)
    assert list(a) == list(a) == list(b)  # iterating again repeats the epoch
    first = list(a)
    a.set_epoch(1)
    second = list(a)
    assert second != first
    b.set_epoch(1)
    assert list(b) == second
    a.set_epoch(0)
    assert list(a) == first
    assert list(EpisodeSampler(LABELS, 3, 1, 2, 8, seed=5)) != first


def test_same_episodes_as_the_evaluation_sampler() -> None:
    sampler = EpisodeSampler(LABELS, 4, 2, 3, 12, seed=3)
    sampler.set_epoch(2)
    expected = sample_episodes(LABELS, 4, 2, 3, 12, seed=np.random.default_rng([3, 2]))
    assert list(sampler) == [np.concatenate([e.support, e.query]).tolist() for e in expected]


def test_batch_sampler_of_a_dataloader_and_split() -> None:
    dm = DigitsDataModule(labels_per_class=1)
    dm.setup()
    test = dm.test_dataloader().dataset
    assert isinstance(test, SampleView)
    targets = test.dataset.targets
    sampler = EpisodeSampler(targets, n_way=5, k_shot=1, n_query=15, num_episodes=3)
    loader = DataLoader(test, batch_sampler=sampler, collate_fn=collate_dict)
    batches = list(loader)
    assert len(batches) == 3
    support, query = sampler.split(batches[0])
    assert support["input"].shape == (5, 1, 8, 8) and query["input"].shape == (75, 1, 8, 8)
    assert set(support["label"].tolist()) == set(query["label"].tolist())
    assert not set(support["index"].tolist()) & set(query["index"].tolist())
    with pytest.raises(ValueError, match="an episode batch has 80 rows"):
        sampler.split({"input": torch.zeros(3, 2)})


def test_unknown_labels_and_errors() -> None:
    labels = np.array([-1] * 10 + [0] * 3 + [1] * 3 + [2] * 2)
    for episode in EpisodeSampler(labels, 2, 1, 2, 10):
        assert (labels[episode] >= 0).all() and 2 not in labels[episode]
    with pytest.raises(ValueError, match=r"only 2 of 3 classes have that many \(too few: \{2: 2\}\)"):
        EpisodeSampler(labels, 3, 1, 2, 1)
    with pytest.raises(ValueError, match="n_way must be an int >= 1"):
        EpisodeSampler(labels, 0, 1, 2, 1)
    with pytest.raises(ValueError, match="num_episodes must be an int >= 1"):
        EpisodeSampler(labels, 2, 1, 2, 0)
    with pytest.raises(ValueError, match="1-D"):
        EpisodeSampler(labels.reshape(2, -1), 2, 1, 2, 1)
    with pytest.raises(ValueError, match="integer class ids"):
        EpisodeSampler(labels.astype(float), 2, 1, 2, 1)
    with pytest.raises(ValueError, match="epoch must be an int >= 0"):
        EpisodeSampler(labels, 2, 1, 2, 1).set_epoch(-1)


def test_a_trainer_draws_each_epochs_own_episodes() -> None:
    import lightning as L
    from torch import nn

    class Recorder(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.layer = nn.Linear(1, 1)
            self.seen: list[list[int]] = []

        def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
            self.seen.append(batch["index"].tolist())
            return self.layer(batch["input"].reshape(-1, 1)).sum()

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=0.0)

    class Items(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return len(LABELS)

        def __getitem__(self, i: int) -> dict[str, object]:
            return {"input": torch.tensor(float(i)), "label": int(LABELS[i]), "index": i}

    sampler = EpisodeSampler(LABELS, 3, 1, 2, 4, seed=2)
    model = Recorder()
    L.Trainer(accelerator="cpu", devices=1, max_epochs=2, logger=False, enable_checkpointing=False,
              enable_progress_bar=False, enable_model_summary=False).fit(
        model, DataLoader(Items(), batch_sampler=sampler, collate_fn=collate_dict))
    reference = EpisodeSampler(LABELS, 3, 1, 2, 4, seed=2)
    expected = list(reference)
    reference.set_epoch(1)
    expected += list(reference)
    assert model.seen == expected and expected[:4] != expected[4:]
