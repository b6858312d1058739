"""StageProgressBar: one bar per fit, and the recipe's quiet console."""

from __future__ import annotations

import io
import logging
import os
import re

import lightning as L
import pytest

from fewlabel.callbacks import StageProgressBar
from fewlabel.datamodules import DigitsDataModule
from fewlabel.plugins import Classifier
from fewlabel.plugins.recipes.build import set_verbose
from fewlabel.plugins.recipes.cli import main


def test_one_bar_for_the_whole_fit() -> None:
    dm = DigitsDataModule(labels_per_class=10, batch_size=16)  # 100 labeled digits: 7 steps an epoch
    dm.setup()
    out = io.StringIO()
    bar = StageProgressBar("teacher", file=out, file_interval_s=0)
    trainer = L.Trainer(max_epochs=3, callbacks=[bar], logger=False, enable_checkpointing=False,
                        enable_model_summary=False)
    module = Classifier({"name": "small_cnn", "width": 4}, num_classes=10)
    trainer.fit(module, dm.labeled_dataloader())
    trainer.validate(module, dm.val_dataloader(), verbose=False)  # draws nothing
    text = out.getvalue()
    assert "teacher" in text and "21/21" in text and "train/loss=" in text
    assert len(set(re.findall(r"teacher:", text))) == 1 and "Validation" not in text and "Epoch" not in text
    assert bar.bar is None  # closed after the fit

    class Stop(Exception):
        pass

    class StopAtStep3(L.Callback):
        def on_train_batch_end(self, trainer: L.Trainer, *args: object) -> None:
            if trainer.global_step == 3:
                raise Stop

    crashing = L.Trainer(max_epochs=3, callbacks=[StageProgressBar("crash", file=out), StopAtStep3()], logger=False,
                         enable_checkpointing=False, enable_model_summary=False)
    with pytest.raises(Stop):
        crashing.fit(module, dm.labeled_dataloader())
    assert crashing.progress_bar_callback.bar is None  # an interrupted fit closes its bar too
    with pytest.raises(ValueError, match="file_interval_s"):
        StageProgressBar(file_interval_s=-1)


TINY = ["--teacher.encoder.width", "4", "--teacher.module.hidden_dim", "32", "--teacher.module.feat_dim", "16",
        "--teacher.trainer.max_epochs", "2", "--student.encoder.width", "4", "--student.module.aux_hidden_dim", "16",
        "--student.trainer.max_epochs", "2", "--finetune.labels_per_class", "[1]", "--finetune.seeds", "[0]",
        "--finetune.trainer.max_epochs", "2", "--pictures", "false", "--logger", "none"]


def test_the_recipe_console_is_quiet_unless_verbose(tmp_path, capfd: pytest.CaptureFixture[str],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WANDB_SILENT", raising=False)
    main(["run", "unfused", "--output", str(tmp_path / "quiet"), *TINY])
    out, err = capfd.readouterr()
    assert "[fewlabel] stage 1/4 teacher" in out and "[fewlabel] stage 3/4 student" in out and "results written" in out
    # one bar per stage: 1,131 pool samples / batch 64 (last partial batch dropped) = 17 steps x 2 epochs
    assert re.search(r"teacher: .*34/34", err) and re.search(r"student: .*34/34", err)
    # stage 2 too: the pool's 5 eval batches (batch 256), the validation split's 1, then the clustering
    assert re.search(r"pseudo-labels: 100%.*7/7.*done", err)
    for noise in ("GPU available", "Tip:", "Epoch 0", "LeafSpec"):
        assert noise not in out + err, noise
    assert logging.getLogger("lightning.pytorch").getEffectiveLevel() == logging.WARNING
    assert os.environ["WANDB_SILENT"] == "true"
    main(["run", "unfused", "--output", str(tmp_path / "verbose"), "--verbose", *TINY])
    out, err = capfd.readouterr()
    assert "Epoch 1" in out and "teacher: " not in err  # Lightning's own bars (on stdout)
    assert logging.getLogger("lightning.pytorch").getEffectiveLevel() == logging.INFO  # its banners and tips
    set_verbose(False)
    assert logging.getLogger("lightning.pytorch").getEffectiveLevel() == logging.WARNING
