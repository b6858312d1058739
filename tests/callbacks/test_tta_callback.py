"""TestTimeAdaptation: errors, restore, equality with the plain wrappers, resume, shift resets, bf16."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader

from fewlabel.callbacks.tta import TestTimeAdaptation
from fewlabel.datamodules import DigitsDataModule, collate_dict
from fewlabel.datamodules.corruptions import CorruptedView, Corruption
from fewlabel.plugins import Classifier
from fewlabel.plugins.tta import ModelFlags, collect_params, create_tta

from trainer_helpers import RecordingLogger


EATA_KWARGS = {"lr": 1e-2, "e_margin": 1.5, "d_margin": 0.5}
SAR_KWARGS = {"lr": 1e-2, "margin_e0": 1.5}


@pytest.fixture(scope="module")
def digits() -> DigitsDataModule:
    dm = DigitsDataModule(batch_size=64, eval_batch_size=64)
    dm.setup("fit")
    return dm


@pytest.fixture(scope="module")
def trained(digits: DigitsDataModule) -> Classifier:
    """A small classifier fitted on the clean digits for a few epochs."""
    L.seed_everything(0, verbose=False)
    module = Classifier({"name": "small_cnn", "width": 8}, num_classes=10, lr=3e-3)
    trainer = L.Trainer(accelerator="cpu", max_epochs=10, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)
    trainer.fit(module, train_dataloaders=digits.labeled_dataloader())
    return module


def _trainer(callbacks: list[L.Callback], **kwargs: Any) -> L.Trainer:
    kwargs.setdefault("inference_mode", False)
    kwargs.setdefault("logger", False)
    return L.Trainer(accelerator="cpu", devices=1, enable_progress_bar=False, enable_model_summary=False,
                     enable_checkpointing=False, callbacks=callbacks, **kwargs)


def _corrupted_test(digits: DigitsDataModule, name: str = "contrast", severity: int = 5,
                    start: int = 0, stop: int | None = None) -> DataLoader:
    test = digits.test_dataloader().dataset
    view = CorruptedView(test, Corruption(name, severity))
    indices = list(range(len(view)))[start:stop]
    return DataLoader(torch.utils.data.Subset(view, indices), batch_size=64, collate_fn=collate_dict)


def _flags_equal(a: ModelFlags, b: ModelFlags) -> bool:
    return a.training == b.training and a.requires_grad == b.requires_grad and a.track_running_stats == b.track_running_stats


def _state(module: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_inference_mode_is_a_clear_error(trained: Classifier, digits: DigitsDataModule) -> None:
    trainer = _trainer([TestTimeAdaptation("tent")], inference_mode=True)
    with pytest.raises(RuntimeError, match=r"inference_mode=False"):
        trainer.test(trained, dataloaders=digits.test_dataloader(), verbose=False)
    with pytest.raises(RuntimeError, match=r"trainer.predict\(\)"):
        trainer.predict(trained, dataloaders=digits.test_dataloader())
    assert "forward" not in vars(trained)


def test_constructor_checks() -> None:
    with pytest.raises(ValueError, match="did you mean 'tent'"):
        TestTimeAdaptation("tnet")
    with pytest.raises(ValueError, match="did you mean 'lr'"):
        TestTimeAdaptation("tent", method_kwargs={"lrr": 1.0})
    with pytest.raises(ValueError, match="episodic"):
        TestTimeAdaptation("tent", method_kwargs={"episodic": True})
    with pytest.raises(ValueError, match="reset_on_shift"):
        TestTimeAdaptation("tent", reset_on_shift=-1.0)
    with pytest.raises(ValueError, match="choose one"):
        TestTimeAdaptation("tent", episodic=True, reset_on_shift=0.2)


@pytest.mark.parametrize(("method", "kwargs"), [("tent", {"lr": 1e-2}), ("eata", EATA_KWARGS), ("sar", SAR_KWARGS),
                                                ("bn_adapt", {}), ("t3a", {"filter_k": 20})])
def test_test_equals_the_plain_wrapper_and_restores_the_model(trained: Classifier, digits: DigitsDataModule,
                                                               method: str, kwargs: dict[str, Any]) -> None:
    loader = _corrupted_test(digits)
    # the plain wrapper on a copy of the module, batch by batch
    copy_ = copy.deepcopy(trained).eval()
    wrapper = create_tta(method, _encoder_head(copy_), **kwargs)
    correct = sum(int((wrapper(b["input"]).argmax(1) == b["label"]).sum()) for b in loader)
    expected_acc = correct / len(loader.dataset)  # type: ignore[arg-type]

    before, flags = _state(trained), ModelFlags.capture(trained)
    callback = TestTimeAdaptation(method, method_kwargs=kwargs)
    result = _trainer([callback]).test(trained, dataloaders=loader, verbose=False)[0]
    assert result["test/acc"] == pytest.approx(expected_acc, abs=1e-6)
    assert "tta/entropy" in result and result["tta/resets"] == 0
    after = _state(trained)
    assert all(torch.equal(before[k], after[k]) for k in before)  # restore=True
    assert _flags_equal(flags, ModelFlags.capture(trained)) and "forward" not in vars(trained)
    adapted = callback.state_dict()["state"]["adapted"]
    if method in ("tent", "eata", "sar"):  # they did adapt the norm parameters during the run
        assert any(not torch.equal(v, before[k.removeprefix("model.")]) for k, v in adapted.items() if k != "_extra_state")


def _encoder_head(module: Classifier) -> nn.Module:
    from fewlabel.callbacks.tta import _EncoderHead

    return _EncoderHead(module.encoder, module.head)


def test_restore_false_keeps_the_adapted_weights(trained: Classifier, digits: DigitsDataModule) -> None:
    module = copy.deepcopy(trained)
    before = _state(module)
    callback = TestTimeAdaptation("tent", restore=False, method_kwargs={"lr": 1e-2})
    _trainer([callback]).test(module, dataloaders=_corrupted_test(digits), verbose=False)
    after = _state(module)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.endswith(("weight", "bias")) and ".blocks." in k for k in changed)
    adapted = callback.state_dict()["state"]["adapted"]
    assert all(torch.equal(after[k.removeprefix("model.")], v) for k, v in adapted.items() if k != "_extra_state")
    assert all(p.requires_grad for p in module.encoder.parameters())  # flags back as they were


@pytest.mark.parametrize("method", ["tent", "eata", "sar", "t3a", "bn_adapt"])
def test_predict_resumes_exactly(trained: Classifier, digits: DigitsDataModule, tmp_path: Path, method: str) -> None:
    kwargs = {"tent": {"lr": 1e-2}, "eata": EATA_KWARGS, "sar": SAR_KWARGS, "t3a": {"filter_k": 10},
              "bn_adapt": {"prior": 16, "momentum": 0.2}}[method]
    full = _corrupted_test(digits, "gaussian_noise", 5)
    first, second = _corrupted_test(digits, "gaussian_noise", 5, 0, 256), _corrupted_test(digits, "gaussian_noise", 5, 256)
    uninterrupted = TestTimeAdaptation(method, method_kwargs=kwargs)
    preds = _trainer([uninterrupted]).predict(trained, dataloaders=full)
    # interrupted: the first 4 batches, a checkpoint, then the rest in a new trainer with a new callback
    stopped = TestTimeAdaptation(method, method_kwargs=kwargs)
    trainer = _trainer([stopped])
    trainer.predict(trained, dataloaders=first)
    trainer.save_checkpoint(tmp_path / "tta.ckpt")
    resumed = TestTimeAdaptation(method, method_kwargs=kwargs)
    rest = _trainer([resumed]).predict(trained, dataloaders=second, ckpt_path=tmp_path / "tta.ckpt")
    for a, b in zip(preds[4:], rest):  # type: ignore[index]
        torch.testing.assert_close(a, b, atol=0, rtol=0)
    end_a, end_b = uninterrupted.state_dict()["state"], resumed.state_dict()["state"]
    assert end_a["batches"] == end_b["batches"] == len(full)
    for key, value in end_a["adapted"].items():
        if key != "_extra_state":
            assert torch.equal(value, end_b["adapted"][key])
    with pytest.raises(ValueError, match="method='tent'"):
        TestTimeAdaptation("sar").load_state_dict({"method": "tent", "episodic": False, "state": None})


def test_episodic_protocol_and_protocol_logging(trained: Classifier, digits: DigitsDataModule) -> None:
    loader = _corrupted_test(digits)
    logger = _HyperparamLogger()
    callback = TestTimeAdaptation("tent", episodic=True, method_kwargs={"lr": 1e-2})
    preds = _trainer([callback]).predict(trained, dataloaders=loader)
    wrapper = create_tta("tent", _encoder_head(copy.deepcopy(trained).eval()), episodic=True, lr=1e-2)
    for pred, batch in zip(preds, loader):  # type: ignore[arg-type]
        torch.testing.assert_close(pred, wrapper(batch["input"]), atol=0, rtol=0)
    _trainer([TestTimeAdaptation("tent", episodic=True)], logger=logger).test(trained, dataloaders=loader, verbose=False)
    assert logger.hparams["tta/method"] == "tent" and logger.hparams["tta/protocol"] == "episodic"
    assert logger.hparams["tta/adapted_values"] == sum(p.numel() for p in collect_params(trained.encoder)[0])


class _HyperparamLogger(RecordingLogger):
    def __init__(self) -> None:
        super().__init__()
        self.hparams: dict[str, Any] = {}

    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        self.hparams.update(dict(params))


def test_reset_on_shift(trained: Classifier, digits: DigitsDataModule) -> None:
    test = digits.test_dataloader().dataset
    clean = [test[i] for i in range(128)]
    shifted = CorruptedView(test, Corruption("gaussian_noise", 5))
    stream = clean + [shifted[i] for i in range(128, 256)]  # two clean batches, then two noisy ones
    loader = DataLoader(stream, batch_size=64, collate_fn=collate_dict)
    callback = TestTimeAdaptation("tent", reset_on_shift=0.1, method_kwargs={"lr": 1e-2})
    result = _trainer([callback]).test(trained, dataloaders=loader, verbose=False)[0]
    assert result["tta/resets"] == 1 and callback.resets == 1
    quiet = TestTimeAdaptation("tent", reset_on_shift=0.1, method_kwargs={"lr": 1e-2})
    clean_only = DataLoader(clean + [test[i] for i in range(128, 256)], batch_size=64, collate_fn=collate_dict)
    assert _trainer([quiet]).test(trained, dataloaders=clean_only, verbose=False)[0]["tta/resets"] == 0


class UserModule(L.LightningModule):
    """A user's own module: ``.encoder`` and ``.head``, its own test step calling ``self(x)``."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.encoder = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.LayerNorm(16), nn.ReLU())
        self.head = nn.Linear(16, 10)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.encoder(x))

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self.log("test/loss", F.cross_entropy(self(batch["input"]), batch["label"]))


def test_users_module_and_missing_contract(digits: DigitsDataModule) -> None:
    module = UserModule()
    before = _state(module)
    callback = TestTimeAdaptation("tent", method_kwargs={"lr": 1e-2})
    result = _trainer([callback]).test(module, dataloaders=_corrupted_test(digits), verbose=False)[0]
    assert "test/loss" in result
    assert all(torch.equal(before[k], v) for k, v in _state(module).items())
    adapted = [k for k in callback.state_dict()["state"]["adapted"] if k != "_extra_state"]
    assert adapted == ["model.encoder.2.weight", "model.encoder.2.bias"]  # the LayerNorm's affine parameters
    headless = UserModule()
    del headless.head
    with pytest.raises(AttributeError, match=r"lacks \.head"):
        _trainer([TestTimeAdaptation("tent")]).test(headless, dataloaders=_corrupted_test(digits), verbose=False)


def test_bf16_mixed(trained: Classifier, digits: DigitsDataModule) -> None:
    module = copy.deepcopy(trained)
    before = _state(module)
    callback = TestTimeAdaptation("eata", method_kwargs=EATA_KWARGS)
    result = _trainer([callback], precision="bf16-mixed").test(module, dataloaders=_corrupted_test(digits),
                                                              verbose=False)[0]
    assert 0.0 < result["test/acc"] <= 1.0 and torch.isfinite(torch.tensor(result["tta/entropy"]))
    assert all(torch.equal(before[k], v) for k, v in _state(module).items())
    adapted = callback.state_dict()["state"]["adapted"]
    assert all(v.dtype == torch.float32 for k, v in adapted.items() if k != "_extra_state")
    assert any(not torch.equal(v, before[k.removeprefix("model.")]) for k, v in adapted.items() if k != "_extra_state")
    t3a = TestTimeAdaptation("t3a")
    out = _trainer([t3a], precision="bf16-mixed").predict(module, dataloaders=_corrupted_test(digits))
    assert out[0].dtype == torch.float32  # type: ignore[index]
