"""``fewlabel fit|validate|test|predict`` (Lightning's LightningCLI) and every shipped config in
examples/configs: each one parses and instantiates (a dry run), so none rots."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import yaml

from fewlabel.plugins.recipes import lightning_cli
from fewlabel.plugins.recipes.cli import main

CONFIGS = Path(__file__).resolve().parents[2] / "examples" / "configs"
METHODS = sorted((CONFIGS / "methods").glob("*.yaml"))
AUDIO = {"byola.yaml", "audio_folder.yaml", "speech_commands.yaml", "esc50.yaml"}


def test_the_configs_are_all_here() -> None:
    assert {p.stem for p in METHODS} >= {"simclr", "byol", "dino", "barlow_twins", "vicreg", "rotnet", "deepcluster_v2",
                                         "byola", "finetune"}
    assert {p.stem for p in (CONFIGS / "data").glob("*.yaml")} == {
        "digits", "image_folder", "audio_folder", "cifar10", "stl10", "speech_commands", "esc50"}


@pytest.mark.parametrize("config", METHODS, ids=lambda p: p.stem)
def test_every_method_config_instantiates(config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    cli = lightning_cli(["--config", str(config), "--trainer.logger", "false"], run=False)
    expected = yaml.safe_load(config.read_text())
    assert type(cli.model).__qualname__ == expected["model"]["class_path"].rsplit(".", 1)[1]
    assert type(cli.datamodule).__qualname__ == expected["data"]["class_path"].rsplit(".", 1)[1]
    assert isinstance(cli.trainer, L.Trainer) and hasattr(cli.model, "encoder")


@pytest.mark.parametrize("config", sorted((CONFIGS / "data").glob("*.yaml")), ids=lambda p: p.stem)
def test_every_data_config_composes_with_a_method(config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    method = CONFIGS / "methods" / ("byola.yaml" if config.name in AUDIO else "simclr.yaml")
    cli = lightning_cli(["--config", str(method), "--config", str(config), "--trainer.logger", "false"], run=False)
    expected = yaml.safe_load(config.read_text())["data"]["class_path"].rsplit(".", 1)[1]
    assert type(cli.datamodule).__qualname__ == expected and cli.datamodule.train_split == "unlabeled"


def test_fit_for_real_with_the_evaluation_callbacks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    args = ["--config", str(CONFIGS / "methods" / "simclr.yaml"), "--config", str(CONFIGS / "callbacks" / "evaluation.yaml"),
            "--model.init_args.encoder", "{name: small_cnn, width: 4}", "--trainer.max_epochs", "5",
            "--trainer.limit_train_batches", "2", "--trainer.default_root_dir", str(tmp_path)]  # evaluators: epoch 5
    assert main(["fit", *args]) == 0
    saved = yaml.safe_load(next(tmp_path.rglob("config.yaml")).read_text())  # Lightning saves the config that ran
    assert saved["model"]["class_path"] == "fewlabel.plugins.SimCLR" and len(saved["trainer"]["callbacks"]) == 3
    metrics = (next(tmp_path.rglob("metrics.csv"))).read_text()
    assert all(name in metrics for name in ("eval/knn_acc", "eval/separability", "eval/few"))
    with pytest.raises(SystemExit):  # a typo in a key is refused before anything runs
        main(["fit", "--config", str(CONFIGS / "methods" / "simclr.yaml"), "--model.init_args.temprature", "0.1"])
    assert "temprature" in capsys.readouterr().err


def test_the_ema_evaluation_config_keeps_the_teacher_update(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from fewlabel.callbacks import EMATeacher, KNNEvaluator

    monkeypatch.chdir(tmp_path)
    for method in ("byol", "dino"):
        cli = lightning_cli(["--config", str(CONFIGS / "methods" / f"{method}.yaml"), "--config",
                             str(CONFIGS / "callbacks" / "evaluation_ema.yaml"), "--trainer.logger", "false"], run=False)
        kinds = {type(c) for c in cli.trainer.callbacks}
        assert {EMATeacher, KNNEvaluator} <= kinds, method


def test_print_config(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "unfused", "--print_config", "--seed", "3"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["seed"] == 3 and printed["teacher"]["encoder"]["name"] == "small_cnn"
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(CONFIGS / "methods" / "simclr.yaml"), "--print_config"])
    assert exit_info.value.code == 0
    assert "class_path: fewlabel.plugins.SimCLR" in capsys.readouterr().out
