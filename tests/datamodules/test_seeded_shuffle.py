"""The labeled loader's order depends on the draw's seed and the epoch alone, never on torch's global generator."""

from __future__ import annotations

import torch

from fewlabel.datamodules import DigitsDataModule, SeededShuffle


def test_order_is_a_function_of_seed_and_epoch() -> None:
    first, again, other = SeededShuffle(20, 3), SeededShuffle(20, 3), SeededShuffle(20, 4)
    epochs = [list(first) for _ in range(3)]  # without set_epoch the epochs count up by themselves
    assert epochs[0] != epochs[1] != epochs[2] and sorted(epochs[0]) == list(range(20))
    again.set_epoch(2)
    assert list(again) == epochs[2]  # a resumed fit asks for epoch 2 directly
    assert list(other) != epochs[0]
    assert len(first) == 20


def test_labeled_and_evaluation_loaders_leave_the_global_generator_alone() -> None:
    dm = DigitsDataModule(labels_per_class=3, seed=5, batch_size=8)
    dm.setup("fit")
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    orders = []
    for _ in range(2):  # two fresh loaders of the same draw: the same order
        orders.append(torch.cat([b["index"] for b in dm.labeled_dataloader()]).tolist())
    for loader in (dm.val_dataloader(), dm.test_dataloader(), dm.unlabeled_dataloader(train=False),
                   dm.labeled_dataloader(train=False)):
        next(iter(loader))
    assert torch.equal(torch.rand(3), expected)
    assert orders[0] == orders[1]
    view = dm.with_labels(3, 6)
    assert torch.cat([b["index"] for b in view.labeled_dataloader()]).tolist() != orders[0]
