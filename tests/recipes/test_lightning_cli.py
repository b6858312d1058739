"""``fewlabel fit|validate|test|predict`` (Lightning's LightningCLI) and every shipped config in
examples/configs: each one parses and instantiates (a dry run), so none rots."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
import yaml

from fewlabel.plugins.encoders import build_encoder
from fewlabel.plugins.recipes import lightning_cli
from fewlabel.plugins.recipes.cli import main

CONFIGS = Path(__file__).resolve().parents[2] / "examples" / "configs"
METHODS = sorted((CONFIGS / "methods").glob("*.yaml"))
AUDIO = {"byola.yaml", "audio_folder.yaml", "speech_commands.yaml", "esc50.yaml"}


def teacher_checkpoint(folder: Path, width: int = 32) -> Path:
    """Where self_distillation.yaml looks for the main job's teacher: a checkpoint of a small_cnn encoder."""
    path = folder / "runs" / "unfused" / "teacher" / "final.ckpt"
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    encoder = build_encoder({"name": "small_cnn", "width": width})
    torch.save({"state_dict": {f"encoder.{k}": v for k, v in encoder.state_dict().items()}}, path)
    return path


def classifier_checkpoint(folder: Path) -> Path:
    """Where knowledge_distillation.yaml looks for its teacher (finetune.yaml writes it there)."""
    from fewlabel.plugins import Classifier

    path = folder / "runs" / "finetune" / "classifier.ckpt"
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": Classifier({"name": "small_cnn", "width": 16}, num_classes=10).state_dict()}, path)
    return path


def test_the_configs_are_all_here() -> None:
    assert {p.stem for p in METHODS} >= {"simclr", "byol", "dino", "barlow_twins", "vicreg", "rotnet", "deepcluster_v2",
                                         "byola", "finetune", "self_distillation", "knowledge_distillation"}
    assert {p.stem for p in (CONFIGS / "callbacks").glob("*.yaml")} == {"evaluation", "evaluation_ema", "tta",
                                                                        "training"}


def test_every_public_callback_and_datamodule_has_a_shipped_config() -> None:
    import fewlabel.callbacks
    import fewlabel.datamodules

    named = " ".join(path.read_text() for path in CONFIGS.rglob("*.yaml"))
    # LinearProbeEvaluator trains on labeled rows of training batches, which an SSL fit's batches lack (see
    # evaluation.yaml); the base classes and the generic folder module are not used on their own
    unused = {"LinearProbeEvaluator", "EmbeddingEvaluator", "FewLabelDataModule", "FolderDataModule"}
    for package in (fewlabel.callbacks, fewlabel.datamodules):
        for name in package.__all__:
            value = getattr(package, name)
            if isinstance(value, type) and issubclass(value, (L.Callback, L.LightningDataModule)) and name not in unused:
                assert f"{package.__name__}.{name}" in named, name
    assert {p.stem for p in (CONFIGS / "data").glob("*.yaml")} == {
        "digits", "digits_shifted", "image_folder", "audio_folder", "cifar10", "stl10", "speech_commands", "esc50",
        "huggingface"}


@pytest.mark.parametrize("config", METHODS, ids=lambda p: p.stem)
def test_every_method_config_instantiates(config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    teacher_checkpoint(tmp_path)
    classifier_checkpoint(tmp_path)
    cli = lightning_cli(["--config", str(config), "--trainer.logger", "false"], run=False)
    expected = yaml.safe_load(config.read_text())
    assert type(cli.model).__qualname__ == expected["model"]["class_path"].rsplit(".", 1)[1]
    assert type(cli.datamodule).__qualname__ == expected["data"]["class_path"].rsplit(".", 1)[1]
    assert isinstance(cli.trainer, L.Trainer) and hasattr(cli.model, "encoder")


@pytest.mark.parametrize("config", METHODS, ids=lambda p: p.stem)
def test_every_method_config_fits_two_steps(config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Not only instantiated: each method's training and validation steps run under LightningCLI (BYOL-A on a tiny
    folder of 16 kHz clips in data/spoken, where its config reads audio)."""
    import soundfile as sf

    monkeypatch.chdir(tmp_path)
    teacher_checkpoint(tmp_path)
    classifier_checkpoint(tmp_path)
    rng = np.random.default_rng(0)
    for word in ("yes", "no"):
        (tmp_path / "data" / "spoken" / word).mkdir(parents=True)
        for i in range(10):
            sf.write(tmp_path / "data" / "spoken" / word / f"{i}.wav", rng.uniform(-0.5, 0.5, 16000), 16000)
    small = ["--data.init_args.labels_per_class", "2", "--data.init_args.batch_size", "4",
             "--data.init_args.val_fraction", "0.3",
             "--model.init_args.encoder", "{name: audio_ntt, n_mels: 64, channels: 8, embed_dim: 32}"] \
        if config.stem == "byola" else []
    assert main(["fit", "--config", str(config), *small, "--trainer.max_epochs", "1", "--trainer.limit_train_batches",
                 "2", "--trainer.limit_val_batches", "2", "--trainer.logger", "false", "--trainer.default_root_dir",
                 str(tmp_path)]) == 0


@pytest.mark.parametrize("config", sorted((CONFIGS / "data").glob("*.yaml")), ids=lambda p: p.stem)
def test_every_data_config_composes_with_a_method(config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    shifted = config.stem == "digits_shifted"  # a test-time shift of the fine-tuning config's labeled digits
    method = CONFIGS / "methods" / ("byola.yaml" if config.name in AUDIO else "finetune.yaml" if shifted else "simclr.yaml")
    cli = lightning_cli(["--config", str(method), "--config", str(config), "--trainer.logger", "false"], run=False)
    expected = yaml.safe_load(config.read_text())["data"]["class_path"].rsplit(".", 1)[1]
    assert type(cli.datamodule).__qualname__ == expected
    assert cli.datamodule.train_split == ("labeled" if shifted else "unlabeled")


def test_the_huggingface_config_reads_a_saved_dataset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    datasets = pytest.importorskip("datasets")
    from PIL import Image

    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(0)
    features = datasets.Features({"img": datasets.Image(), "label": datasets.ClassLabel(names=["a", "b"])})
    split = datasets.Dataset.from_dict({"img": [Image.fromarray(rng.integers(0, 256, (9, 9, 3), dtype=np.uint8))
                                                for _ in range(40)], "label": [i % 2 for i in range(40)]}, features=features)
    datasets.DatasetDict({"train": split, "test": split.select(range(10))}).save_to_disk("data/my_hf_dataset")
    cli = lightning_cli(["--config", str(CONFIGS / "methods" / "simclr.yaml"), "--config",
                         str(CONFIGS / "data" / "huggingface.yaml"), "--data.init_args.labels_per_class", "2",
                         "--trainer.logger", "false"], run=False)
    cli.datamodule.setup()
    assert cli.datamodule.class_names == ["a", "b"] and cli.datamodule.input_shape == (3, 32, 32)
    assert next(iter(cli.datamodule.train_dataloader()))["input"].shape[1:] == (3, 32, 32)


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


def test_self_distillation_config_distils_the_main_jobs_teacher(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The student stage on its own: the teacher comes from its checkpoint (weights loaded, not the student's
    own encoder), its pseudo-labels are logged, and the student trains."""
    from fewlabel.callbacks import PseudoLabeler

    monkeypatch.chdir(tmp_path)
    path = teacher_checkpoint(tmp_path)
    config = CONFIGS / "methods" / "self_distillation.yaml"
    cli = lightning_cli(["--config", str(config), "--trainer.logger", "false"], run=False)
    labeler = next(c for c in cli.trainer.callbacks if isinstance(c, PseudoLabeler))
    saved = torch.load(path)["state_dict"]
    assert all(torch.equal(v, saved[f"encoder.{k}"]) for k, v in labeler.teacher.state_dict().items())
    assert main(["fit", "--config", str(config), "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "3",
                 "--trainer.log_every_n_steps", "1",
                 "--trainer.default_root_dir", str(tmp_path)]) == 0
    metrics = next(tmp_path.rglob("metrics.csv")).read_text()
    assert "pseudo_labels/nmi" in metrics and "train/loss" in metrics
    teacher_checkpoint(tmp_path, width=8)  # a teacher that does not fit the spec is named
    with pytest.raises(SystemExit, match=r"^fewlabel: error: ValueError: the weights of runs.unfused.teacher.final\.ckpt "
                                         r"do not fit the encoder \{'name': 'small_cnn', 'width': 32\}: size mismatch"):
        lightning_cli(["--config", str(config), "--trainer.logger", "false"], run=False)  # one line, no traceback
    (tmp_path / "runs" / "unfused" / "teacher" / "final.ckpt").unlink()
    with pytest.raises(SystemExit, match=r"FileNotFoundError: checkpoint runs.unfused.teacher.final\.ckpt does not exist"):
        main(["fit", "--config", str(config)])
    monkeypatch.setenv("FEWLABEL_DEBUG", "1")
    with pytest.raises(ValueError, match="Does not validate against any of the Union subtypes"):  # the whole story
        main(["fit", "--config", str(config)])


def test_knowledge_distillation_config_distils_finetunes_classifier(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """finetune.yaml writes runs/finetune/classifier.ckpt; knowledge_distillation.yaml distils it (the teacher's
    weights loaded), and the student's checkpoint can be tested by LightningCLI (its hyperparameters rebuild it)."""
    monkeypatch.chdir(tmp_path)
    short = ["--trainer.max_epochs", "1", "--trainer.limit_train_batches", "3", "--trainer.log_every_n_steps", "1",
             "--trainer.default_root_dir", str(tmp_path)]
    assert main(["fit", "--config", str(CONFIGS / "methods" / "finetune.yaml"), *short]) == 0
    teacher = torch.load(tmp_path / "runs" / "finetune" / "classifier.ckpt", weights_only=False)["state_dict"]
    config = ["--config", str(CONFIGS / "methods" / "knowledge_distillation.yaml")]
    cli = lightning_cli([*config, "--trainer.logger", "false"], run=False)
    assert all(torch.equal(v, teacher[k]) for k, v in cli.model.teacher.state_dict().items())
    assert main(["fit", *config, *short, "--trainer.logger", "CSVLogger",
                 "--trainer.logger.init_args.save_dir", "kd"]) == 0
    metrics = next((tmp_path / "kd").rglob("metrics.csv")).read_text()
    assert "train/teacher_agreement" in metrics and "train/distill" in metrics
    student = next((tmp_path / "kd").rglob("*.ckpt"))
    assert main(["test", *config, "--ckpt_path", str(student), "--trainer.logger", "false"]) == 0


def test_tta_config_adapts_while_testing_a_fine_tuned_classifier(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    finetune = ["--config", str(CONFIGS / "methods" / "finetune.yaml"), "--model.init_args.encoder",
                "{name: small_cnn, width: 4}", "--trainer.default_root_dir", str(tmp_path)]
    assert main(["fit", *finetune, "--trainer.max_epochs", "2"]) == 0
    checkpoint = next(tmp_path.rglob("*.ckpt"))
    assert main(["test", *finetune, "--config", str(CONFIGS / "data" / "digits_shifted.yaml"), "--config",
                 str(CONFIGS / "callbacks" / "tta.yaml"), "--ckpt_path", str(checkpoint)]) == 0
    tested = sorted(tmp_path.rglob("metrics.csv"))[-1].read_text()
    assert "tta/entropy" in tested and "test/acc" in tested


def test_the_training_callbacks_config_fits_and_draws(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["fit", "--config", str(CONFIGS / "methods" / "simclr.yaml"), "--config",
                 str(CONFIGS / "callbacks" / "training.yaml"), "--model.init_args.encoder", "{name: small_cnn, width: 4}",
                 "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2",
                 "--trainer.default_root_dir", str(tmp_path)]) == 0
    assert len(list(tmp_path.rglob("projections/*.png"))) == 1  # drawn when the fit ends
    state = torch.load(next(tmp_path.rglob("*.ckpt")), weights_only=False)["callbacks"]
    assert any(key.startswith("RNGStateKeeper") for key in state)


def test_the_ema_evaluation_config_keeps_the_teacher_update(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from fewlabel.callbacks import EMATeacher, KNNEvaluator

    monkeypatch.chdir(tmp_path)
    for method in ("byol", "dino"):
        cli = lightning_cli(["--config", str(CONFIGS / "methods" / f"{method}.yaml"), "--config",
                             str(CONFIGS / "callbacks" / "evaluation_ema.yaml"), "--trainer.logger", "false"], run=False)
        kinds = {type(c) for c in cli.trainer.callbacks}
        assert {EMATeacher, KNNEvaluator} <= kinds, method


def test_print_config(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "unfused", "--print_config", "--seed", "3", "--teacher.module.lr", "1e-3"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["seed"] == 3 and printed["teacher"]["encoder"]["name"] == "small_cnn"
    assert printed["teacher"]["module"]["lr"] == 0.001  # checked, and printed as the run reads it
    with pytest.raises(SystemExit, match=r"unknown key distill\.module\.lrr"):  # checked before printing
        main(["run", "simclrv2", "--print_config", "--distill.module.lrr", "0.1"])
    assert main(["fewshot", "--checkpoint", "unused.ckpt", "--print_config", "--data.batch_size", "32"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["data"]["batch_size"] == 32
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(CONFIGS / "methods" / "simclr.yaml"), "--print_config"])
    assert exit_info.value.code == 0
    assert "class_path: fewlabel.plugins.SimCLR" in capsys.readouterr().out
