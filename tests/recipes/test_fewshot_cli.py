"""``fewlabel fewshot`` on a tiny checkpoint, its errors, and the few-shot digits benchmark in --quick mode."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
import yaml

from fewlabel.datamodules import DigitsDataModule
from fewlabel.plugins.encoders.base import build_encoder
from fewlabel.plugins.evaluation import evaluate_episodes
from fewlabel.plugins.gather import gather_embeddings
from fewlabel.plugins.methods import Classifier
from fewlabel.plugins.recipes import RecipeError, load_config
from fewlabel.plugins.recipes.cli import build_parser, main
from fewlabel.plugins.recipes.fewshot import load_encoder, run_config_path, run_fewshot

ROOT = Path(__file__).resolve().parents[2]
TINY = ["student.encoder.width=4", "teacher.encoder.width=8"]


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run folder like ``fewlabel run unfused`` writes: config.yaml, a 1-epoch student and a teacher checkpoint."""
    run = tmp_path_factory.mktemp("run")
    config = load_config("unfused", overrides=TINY)
    (run / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    L.seed_everything(0)
    dm = DigitsDataModule(labels_per_class=5)
    dm.setup()
    student = Classifier(config["student"]["encoder"], num_classes=10, lr=0.01)
    L.Trainer(accelerator="cpu", devices=1, max_epochs=1, logger=False, enable_checkpointing=False,
              enable_progress_bar=False, enable_model_summary=False).fit(student, dm.labeled_dataloader())
    (run / "student").mkdir()
    torch.save({"state_dict": student.state_dict()}, run / "student" / "final.ckpt")  # as the stage runner does
    teacher = build_encoder(config["teacher"]["encoder"])
    (run / "teacher").mkdir()
    torch.save({"state_dict": {f"encoder.{k}": v for k, v in teacher.state_dict().items()}},
               run / "teacher" / "final.ckpt")
    torch.save({"state_dict": {"head.weight": torch.zeros(2, 2)}}, run / "no_encoder.ckpt")
    return run


def test_table_of_the_run_folders_student(run_folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ckpt = run_folder / "student" / "final.ckpt"
    args = ["fewshot", "--checkpoint", str(ckpt), "--head", "protonet", "gda", "--shots", "1", "2",
            "--queries", "5", "--episodes", "30"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert f"config: {run_folder / 'config.yaml'}" in out  # the run's own config, found next to the stage folder
    assert "student encoder (16-d), digits test split (540 samples)" in out
    config = load_config("unfused", run_folder / "config.yaml")
    result = run_fewshot(ckpt, config, heads=["protonet", "gda"], shots=[1, 2], n_query=5, num_episodes=30)
    assert [(r["head"], r["k_shot"]) for r in result["rows"]] == [("protonet", 1), ("gda", 1), ("protonet", 2),
                                                                  ("gda", 2)]
    for r in result["rows"]:
        cell = f"{100 * r['accuracy']:.2f} +- {100 * r['ci95']:.2f}"
        assert f"{r['head']:<12} {5:>4} {r['k_shot']:>5} {5:>7} {30:>8} {cell:>20}" in out
    # the figures are the pure function's on the checkpoint's encoder
    encoder, section = load_encoder(ckpt, config)
    state = torch.load(ckpt, weights_only=True)["state_dict"]
    assert section == "student"
    torch.testing.assert_close(encoder.state_dict()["blocks.0.0.weight"], state["encoder.blocks.0.0.weight"])
    dm = DigitsDataModule()
    dm.setup()
    test = gather_embeddings(encoder, dm.test_dataloader())
    expected = evaluate_episodes("gda", test.embeddings, test.labels, 5, 2, 5, 30)
    assert result["rows"][3]["accuracy"] == pytest.approx(expected.mean)
    assert 0.2 < expected.mean < 1.0


def test_simpleshot_centres_on_the_pool_mean(run_folder: Path) -> None:
    config = load_config("unfused", run_folder / "config.yaml")
    ckpt = run_folder / "student" / "final.ckpt"
    pool = run_fewshot(ckpt, config, heads=["simpleshot"], shots=[1], n_query=5, num_episodes=40)
    support = run_fewshot(ckpt, config, heads=["simpleshot"], shots=[1], n_query=5, num_episodes=40,
                          center="support")
    encoder, _ = load_encoder(ckpt, config)
    dm = DigitsDataModule()
    dm.setup()
    test = gather_embeddings(encoder, dm.test_dataloader())
    mean = gather_embeddings(encoder, dm.unlabeled_dataloader(train=False)).embeddings.astype(np.float64).mean(0)
    expected = evaluate_episodes("simpleshot", test.embeddings, test.labels, 5, 1, 5, 40,
                                 head_kwargs={"base_mean": mean.astype(np.float32)})
    assert pool["rows"][0]["accuracy"] == pytest.approx(expected.mean)
    assert support["rows"][0]["accuracy"] == pytest.approx(
        evaluate_episodes("simpleshot", test.embeddings, test.labels, 5, 1, 5, 40).mean)


def test_auto_finds_the_teacher_and_an_explicit_config(run_folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ckpt = run_folder / "teacher" / "final.ckpt"
    assert main(["fewshot", "--checkpoint", str(ckpt), "--shots", "1", "--episodes", "5", "--queries", "3",
                 "--config", str(run_folder / "config.yaml"), "--data.val_fraction", "0.2"]) == 0
    assert "teacher encoder (32-d)" in capsys.readouterr().out
    assert run_config_path(run_folder / "no_encoder.ckpt") is None  # not inside a stage folder


@pytest.mark.parametrize(("extra", "message"), [
    (["--checkpoint", "missing.ckpt"], "missing.ckpt does not exist"),
    (["--checkpoint", "{run}/no_encoder.ckpt"], "holds no encoder weights"),
    (["--checkpoint", "{run}/teacher/final.ckpt", "--encoder", "student"], "fit no encoder of the configuration"),
    (["--checkpoint", "{run}/student/final.ckpt", "--queries", "60"],
     r"test split: .*need 5 classes with at least 61 samples"),
    (["--checkpoint", "{run}/student/final.ckpt", "--ways", "0"], "n_way must be an int >= 1"),
    (["--checkpoint", "{run}/student/final.ckpt", "--data.batch_sise", "3"], "did you mean 'batch_size'"),
])
def test_errors_are_one_line(run_folder: Path, extra: list[str], message: str) -> None:
    args = ["fewshot", "--config", str(run_folder / "config.yaml"), *(a.format(run=run_folder) for a in extra)]
    with pytest.raises(SystemExit, match=message):
        main(args)
    with pytest.raises(SystemExit) as info:  # argparse refuses an unknown head, naming the choices
        main(["fewshot", "--checkpoint", "x.ckpt", "--head", "protonett"])
    assert info.value.code == 2


def test_load_encoder_errors(run_folder: Path) -> None:
    config = load_config("unfused", run_folder / "config.yaml")
    with pytest.raises(RecipeError, match="encoder section must be"):
        load_encoder(run_folder / "student" / "final.ckpt", config, "pupil")


def test_run_command_is_unchanged() -> None:
    args, extra = build_parser().parse_known_args(["run", "unfused", "--teacher.module.lr", "0.1"])
    assert (args.command, args.recipe, args.output, args.logger, args.recompute) == (
        "run", "unfused", None, "wandb", False)  # no --output: main() writes to runs/<recipe>
    assert extra == ["--teacher.module.lr", "0.1"]


def test_benchmark_quick(run_folder: Path, tmp_path: Path) -> None:
    script = ROOT / "benchmarks" / "few_shot_digits.py"
    out = subprocess.run([sys.executable, str(script), "--quick", "--run", str(run_folder)], capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    for figure in ("unfused_student", "raw_pixels", "protonet", "simpleshot", "gda", "logistic", "bd_cspn",
                   "1-shot", "5-shot", "wall_time_s:"):
        assert figure in out.stdout, out.stdout
    missing = subprocess.run([sys.executable, str(script), "--quick", "--run", str(tmp_path)], capture_output=True,
                             text=True, timeout=300)
    assert missing.returncode != 0 and "fewlabel run unfused --output" in missing.stderr
