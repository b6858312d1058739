"""FewShotEvaluator on a user's own module: the logged figures, the encoder's flags, resuming, errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pytest
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from fewlabel.callbacks import RNGStateKeeper
from fewlabel.callbacks.eval import FewShotEvaluator
from fewlabel.plugins.evaluation import evaluate_episodes
from fewlabel.plugins.gather import gather_embeddings

K, PER, DIM = 6, 12, 5


class Rows(Dataset):
    def __init__(self, x: Tensor, y: Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        return {"input": self.x[i], "label": self.y[i], "index": torch.tensor(i)}


def blobs(seed: int, per: int = PER) -> Rows:
    """Overlapping Gaussian blobs: accuracies that are neither chance nor 100 %."""
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(0).normal(0.0, 1.5, (K, DIM))
    x = np.concatenate([c + rng.normal(0.0, 1.0, (per, DIM)) for c in centres])
    return Rows(torch.tensor(x, dtype=torch.float32), torch.tensor(np.repeat(np.arange(K), per)))


class UserModule(L.LightningModule):
    """A user's own module: ``.encoder`` (with ``embed_dim``) and nothing else fewlabel knows about."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(DIM, DIM), nn.Dropout(0.1))
        self.encoder.embed_dim = DIM
        self.head = nn.Linear(DIM, K)

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        return nn.functional.cross_entropy(self.head(self.encoder(batch["input"])), batch["label"])

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


class Recorder(L.pytorch.loggers.logger.Logger):
    def __init__(self) -> None:
        super().__init__()
        self.logged: list[tuple[int | None, dict[str, float]]] = []

    name = "recording"  # type: ignore[assignment]
    version = 0  # type: ignore[assignment]

    def log_hyperparams(self, *args: Any, **kwargs: Any) -> None:
        pass

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.logged.append((step, dict(metrics)))


def trainer(epochs: int, callbacks: list[L.Callback], **kwargs: Any) -> L.Trainer:
    kwargs.setdefault("logger", False)
    return L.Trainer(accelerator="cpu", devices=1, max_epochs=epochs, enable_progress_bar=False,
                     enable_model_summary=False, enable_checkpointing=False, callbacks=callbacks, **kwargs)


def train_loader() -> DataLoader:
    return DataLoader(blobs(1), batch_size=24, shuffle=True)


def eval_loader() -> DataLoader:
    return DataLoader(blobs(2), batch_size=16)


def test_logs_mean_and_ci_equal_to_the_pure_function_and_restores_flags() -> None:
    L.seed_everything(0)
    model, logger = UserModule(), Recorder()
    cb = FewShotEvaluator(head="protonet", n_way=4, k_shot=2, n_query=5, num_episodes=50, seed=3,
                          eval_dataloader=eval_loader, eval_on_fit_end=True, every_n_epochs=1)
    trainer(2, [cb], logger=logger).fit(model, train_dataloaders=train_loader())
    assert model.encoder.training  # the encoder's flags are as they were (Lightning's train mode)
    emb = gather_embeddings(model.encoder, eval_loader())
    expected = evaluate_episodes("protonet", emb.embeddings, emb.labels, 4, 2, 5, 50, seed=3)
    assert 0.3 < expected.mean < 1.0  # a number that can be wrong
    name = "eval/fewshot_protonet_4way2shot_acc"
    assert cb.metrics == pytest.approx({name: expected.mean, name + "_ci95": expected.ci95})
    per_epoch = [m for _, m in logger.logged if name in m]
    assert len(per_epoch) == 2  # after each epoch; the fit end is the same step, not repeated
    assert all(name + "_ci95" in m for _, m in logger.logged if name in m)
    assert per_epoch[-1][name] == pytest.approx(expected.mean)
    assert per_epoch[-1][name + "_ci95"] == pytest.approx(expected.ci95)
    np.testing.assert_allclose(cb.result.accuracies, expected.accuracies)


class Restored(FewShotEvaluator):
    """Records the figures it holds when training starts (after a checkpoint's state was loaded)."""

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.at_start = (dict(self.metrics), self.last_evaluated_step)


def run(epochs: int, ckpt: Path | None) -> tuple[L.Trainer, Restored]:
    cb = Restored(head="gda", head_kwargs={"shrinkage": 0.2}, n_way=3, k_shot=1, n_query=4, num_episodes=30,
                  eval_dataloader=eval_loader, every_n_epochs=3, eval_on_fit_end=True)
    t = trainer(epochs, [RNGStateKeeper(), cb])
    t.fit(UserModule(), train_dataloaders=train_loader(), ckpt_path=ckpt)
    return t, cb


def test_stop_and_resume_restores_the_state_and_matches_an_uninterrupted_run(tmp_path: Path) -> None:
    L.seed_everything(0)
    _, full = run(4, None)  # evaluates after epoch 3 (step 9) and at the fit end (step 12)
    L.seed_everything(0)
    first, stopped = run(3, None)  # evaluates after epoch 3 (step 9)
    assert stopped.last_evaluated_step == 9 and len(stopped.metrics) == 2
    ckpt = tmp_path / "stop.ckpt"
    first.save_checkpoint(ckpt)
    saved = torch.load(ckpt, weights_only=True)["callbacks"][stopped.state_key]
    assert saved == {"metrics": stopped.metrics, "last_evaluated_step": 9}
    torch.manual_seed(123)  # the resumed run must not depend on the generators' state before it
    _, resumed = run(4, ckpt)
    assert resumed.at_start == (stopped.metrics, 9)  # the state came back from the checkpoint
    assert resumed.last_evaluated_step == full.last_evaluated_step == 12
    assert resumed.metrics == pytest.approx(full.metrics, abs=1e-6)
    assert resumed.metrics != stopped.metrics


def test_too_few_samples_per_class_is_named() -> None:
    cb = FewShotEvaluator(n_way=5, k_shot=5, n_query=15, eval_dataloader=eval_loader)
    with pytest.raises(ValueError, match="need 5 classes with at least 20 samples"):
        trainer(1, [cb]).fit(UserModule(), train_dataloaders=train_loader())


def test_contract_is_checked() -> None:
    class NoEncoder(UserModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = self.encoder
            del self.encoder

        def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
            return self.head(self.net(batch["input"])).sum()

    with pytest.raises(AttributeError, match="FewShotEvaluator needs NoEncoder to have an `encoder`"):
        trainer(1, [FewShotEvaluator(eval_dataloader=eval_loader)]).fit(NoEncoder(),
                                                                        train_dataloaders=train_loader())


def test_names_state_keys_and_bad_arguments() -> None:
    cb = FewShotEvaluator(head="bd_cspn", n_way=5, k_shot=5)
    assert cb.metric_name == "eval/fewshot_bd_cspn_5way5shot_acc"
    assert cb.ci_metric_name == "eval/fewshot_bd_cspn_5way5shot_acc_ci95"
    assert cb.state_key != FewShotEvaluator(head="protonet", n_way=5, k_shot=5).state_key
    assert FewShotEvaluator(metric_name="fs").ci_metric_name == "fs_ci95"
    for kwargs, match in [({"head": "protonett"}, "did you mean 'protonet'"),
                          ({"head": "linear"}, "unknown few-shot head 'linear'"),
                          ({"n_way": 0}, "n_way must be an int >= 1"),
                          ({"num_episodes": 0}, "num_episodes must be an int >= 1"),
                          ({"seed": -1}, "seed must be an int >= 0"),
                          ({"head": "gda", "head_kwargs": {"shrinkage": 2.0}}, "shrinkage must be"),
                          ({"head_kwargs": {"bogus": 1}}, "unexpected keyword"),
                          ({"every_n_epochs": None}, "would never evaluate")]:
        with pytest.raises(ValueError, match=match):
            FewShotEvaluator(**kwargs)
