"""The UnFuSeD recipe end to end on the digits data (tiny epochs), its CLI, config and resume."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from fewlabel.plugins.recipes import RecipeError, load_config, run_unfused
from fewlabel.plugins.recipes.cli import main

TINY = [
    "teacher.encoder.width=4", "teacher.module.hidden_dim=32", "teacher.module.feat_dim=16",
    "teacher.trainer.max_epochs=3", "student.encoder.width=4", "student.module.aux_hidden_dim=16",
    "student.trainer.max_epochs=2", "finetune.labels_per_class=[1, 2]", "finetune.seeds=[0, 1]",
    "finetune.trainer.max_epochs=3", "pictures=false",
]


def tiny_config(**extra: Any) -> dict[str, Any]:
    return load_config("unfused", overrides=TINY + [f"{k}={v}" for k, v in extra.items()])


def test_recipe_end_to_end_and_rerun_reuses_everything(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    results = run_unfused(tiny_config(pictures="true"), tmp_path, logger="csv")
    written = json.loads((tmp_path / "results.json").read_text())
    assert written["recipe"] == "unfused" and written["dataset"] == "digits"
    rows = {(r["method"], r["labels_per_class"]): r for r in written["rows"]}
    assert set(rows) == {(m, k) for m in ("supervised", "ssl+finetune", "unfused") for k in (1, 2)}
    for row in rows.values():
        assert 0.0 <= row["accuracy_mean"] <= 1.0 and row["accuracy_std"] >= 0.0 and row["num_draws"] == 2
        assert row["params"] > 0
    assert rows[("unfused", 1)]["params"] == rows[("supervised", 1)]["params"]  # same student architecture
    assert 0.0 <= written["pseudo_labels"]["pseudo_labels/nmi"] <= 1.0
    assert len(written["runs"]) == 12 and results["rows"] == written["rows"]
    assert "method" in capsys.readouterr().out  # the printed table
    # the table also as CSV and Markdown in the run folder
    lines = (tmp_path / "results.csv").read_text().splitlines()
    assert lines[0].startswith("method,labels_per_class,accuracy_mean") and len(lines) == 1 + 6
    assert lines[1].split(",")[:3] == [written["rows"][0]["method"], str(written["rows"][0]["labels_per_class"]),
                                       str(written["rows"][0]["accuracy_mean"])]
    markdown = (tmp_path / "results.md").read_text()
    for picture in ("label_efficiency.png", "embeddings_teacher.png", "embeddings_student.png"):
        assert (tmp_path / picture).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", picture
    unfused_1 = rows[("unfused", 1)]
    assert f"| `unfused` | {unfused_1['params']:,} | {100 * unfused_1['accuracy_mean']:.2f} ± " in markdown
    # each fine-tune run logs the label draw it trained on (a view of the datamodule; the datamodule is not changed)
    # (the draws of a method and budget train together: one logger per method and budget)
    logged = yaml.safe_load((tmp_path / "logs" / "finetune" / "unfused-lpc2" / "hparams.yaml").read_text())
    assert logged["stage"] == "finetune" and logged["method"] == "unfused" and logged["members"] == 2
    assert logged["data"]["seed1"]["labels_per_class"] == 2 and logged["data"]["seed1"]["seed"] == 1

    teacher_mtime = (tmp_path / "teacher" / "final.ckpt").stat().st_mtime_ns
    again = run_unfused(tiny_config(), tmp_path, logger="csv")
    out = capsys.readouterr().out
    assert "reused the finished teacher" in out and "reused the finished student" in out
    assert (tmp_path / "teacher" / "final.ckpt").stat().st_mtime_ns == teacher_mtime
    assert again["rows"] == written["rows"]

    config_yaml = (tmp_path / "config.yaml").read_text()
    changed = tiny_config(**{"teacher.trainer.max_epochs": 5})
    with pytest.raises(RecipeError, match=r"teacher \(differs at: teacher\.trainer\.max_epochs\); student"):
        run_unfused(changed, tmp_path, logger="csv")
    more_epochs = tiny_config(**{"finetune.trainer.max_epochs": 4})
    with pytest.raises(RecipeError, match=r"12 finished .*\(differs at: finetune\.trainer\.max_epochs.*--recompute"):
        run_unfused(more_epochs, tmp_path, logger="csv")
    assert (tmp_path / "config.yaml").read_text() == config_yaml  # a refused rerun leaves the folder as it was
    # cosmetic trainer keys do not make a stage stale
    quiet = run_unfused(tiny_config(**{"trainer.enable_progress_bar": "false"}), tmp_path, logger="csv")
    assert quiet["rows"] == written["rows"]
    recomputed = run_unfused(more_epochs, tmp_path, logger="csv", recompute=True)
    assert (tmp_path / "teacher" / "final.ckpt").stat().st_mtime_ns == teacher_mtime  # upstream stages kept
    assert {r["labels_per_class"] for r in recomputed["rows"]} == {1, 2}
    assert json.loads((tmp_path / "finetune" / "unfused" / "lpc1_seed0.json").read_text())["settings"]["finetune"][
        "trainer"]["max_epochs"] == 4

    # the draws trained together (ClassifierEnsemble) equal separate runs, one Trainer each
    with pytest.raises(RecipeError, match=r"differs at: draws_together"):
        run_unfused(tiny_config(**{"finetune.draws_together": "false"}), tmp_path, logger="none")
    separate = run_unfused(tiny_config(**{"finetune.draws_together": "false"}), tmp_path, logger="none", recompute=True)
    test_size = 540
    for ours, theirs in zip(written["runs"], separate["runs"]):
        assert (ours["method"], ours["labels_per_class"], ours["seed"]) == (theirs["method"], theirs["labels_per_class"],
                                                                           theirs["seed"])
        # float rounding may at most flip a near-tie prediction
        assert abs(ours["test_accuracy"] - theirs["test_accuracy"]) <= 1.5 / test_size, (ours, theirs)


def test_interrupted_stage_resumes_to_the_uninterrupted_result(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from fewlabel.plugins.recipes import build

    config = tiny_config(**{"finetune.labels_per_class": "[1]", "finetune.seeds": "[0]"})
    run_unfused(config, tmp_path / "full", logger="none")

    original = build.make_trainer

    class Crash(Exception):
        pass

    def crashing_trainer(*args: Any, **kwargs: Any) -> Any:
        import lightning as L

        class CrashAtEpoch2(L.Callback):
            def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
                if trainer.current_epoch == 2:
                    raise Crash("simulated crash in the teacher stage")

        kwargs["callbacks"] = [*kwargs["callbacks"], CrashAtEpoch2()]
        return original(*args, **kwargs)

    import fewlabel.plugins.recipes.unfused as unfused

    monkeypatch.setattr(unfused, "make_trainer", crashing_trainer)
    with pytest.raises(Crash):
        run_unfused(config, tmp_path / "part", logger="none")
    assert (tmp_path / "part" / "teacher" / "last.ckpt").exists()
    assert not (tmp_path / "part" / "teacher" / "final.ckpt").exists()
    monkeypatch.setattr(unfused, "make_trainer", original)
    resumed = run_unfused(config, tmp_path / "part", logger="none")

    full_teacher = torch.load(tmp_path / "full" / "teacher" / "final.ckpt", weights_only=False)["state_dict"]
    part_teacher = torch.load(tmp_path / "part" / "teacher" / "final.ckpt", weights_only=False)["state_dict"]
    for name, value in full_teacher.items():
        assert torch.allclose(value.float(), part_teacher[name].float(), atol=1e-5), name
    full = json.loads((tmp_path / "full" / "results.json").read_text())
    assert [r["test_accuracy"] for r in resumed["runs"]] == pytest.approx([r["test_accuracy"] for r in full["runs"]],
                                                                          abs=1e-6)


def test_config_overrides_and_errors(tmp_path: Path) -> None:
    config = load_config("unfused", overrides=["data.root=/x", "finetune.seeds=[0, 3]", "new.key=null"])
    assert config["data"]["root"] == "/x" and config["finetune"]["seeds"] == [0, 3] and config["new"]["key"] is None
    mapping = load_config("unfused", overrides=["finetune.module={lr: 0.5}"])
    assert mapping["finetune"]["module"]["lr"] == 0.5 and "encoder_lr_scale" in mapping["finetune"]["module"]
    path = tmp_path / "c.yaml"
    path.write_text("teacher:\n  trainer: {max_epochs: 7}\n")
    merged = load_config("unfused", path)
    assert merged["teacher"]["trainer"]["max_epochs"] == 7
    assert merged["teacher"]["encoder"]["name"] == "small_cnn"  # defaults kept
    path.write_text("teacher:\n  encoder: {name: audio_ntt, channels: 8}\n  augment: {name: byola}\n")
    switched = load_config("unfused", path)
    assert switched["teacher"]["encoder"] == {"name": "audio_ntt", "channels": 8}  # no small_cnn width leaks in
    assert switched["teacher"]["augment"] == {"name": "byola"}
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_config("unfused", tmp_path / "missing.yaml")
    with pytest.raises(ValueError, match="section.key=value"):
        load_config("unfused", overrides=["novalue"])
    with pytest.raises(ValueError, match="no packaged default"):
        load_config("other")


def test_cli_reports_bad_arguments_clearly(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="unrecognised argument"):
        main(["run", "unfused", "--output", str(tmp_path), "stray"])
    with pytest.raises(SystemExit, match="needs a value"):
        main(["run", "unfused", "--output", str(tmp_path), "--data.root"])
    with pytest.raises(SystemExit, match="does not exist"):
        main(["run", "unfused", "--config", str(tmp_path / "nope.yaml")])


def test_unknown_data_and_missing_root_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="did you mean 'digits'.*choose one of"):
        run_unfused(tiny_config(**{"data.name": "digit"}), tmp_path, logger="none")
    with pytest.raises(ValueError, match="needs data.root"):
        run_unfused(tiny_config(**{"data.name": "audio_folder"}), tmp_path, logger="none")


def test_non_finite_loss_names_the_stage(tmp_path: Path) -> None:
    config = tiny_config(**{"teacher.module.lr": "1.0e+30", "teacher.module.warmup_fraction": "0.0"})
    with pytest.raises(FloatingPointError, match=r"stage 'teacher': DeepClusterV2: non-finite loss .* global step \d+"):
        run_unfused(config, tmp_path, logger="none")


def test_recipe_runs_with_two_process_ddp(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    overrides = [arg for item in TINY for arg in ("--" + item.split("=", 1)[0], item.split("=", 1)[1])]
    cmd = [sys.executable, "-m", "fewlabel.plugins", "run", "unfused", "--output", str(tmp_path / "run"),
           "--logger", "csv", "--trainer.devices", "2", "--trainer.strategy", "ddp", *overrides,
           "--finetune.seeds", "[0]"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert len(results["rows"]) == 6
    assert proc.stdout.count("stage 1/4") == 1  # progress lines come from rank 0 only


def test_recipe_runs_in_bf16_mixed(tmp_path: Path) -> None:
    config = tiny_config(**{"trainer.precision": "bf16-mixed", "finetune.labels_per_class": "[1]",
                            "finetune.seeds": "[0]"})
    results = run_unfused(config, tmp_path, logger="none")
    assert len(results["rows"]) == 3
    assert all(0.0 <= row["accuracy_mean"] <= 1.0 for row in results["rows"])
    assert 0.0 <= results["pseudo_labels"]["pseudo_labels/nmi"] <= 1.0


@pytest.mark.parametrize("method", ["simclr", "byol", "dino", "fewlabel.plugins.methods.simclr.SimCLR"])
def test_teacher_method_is_selectable(tmp_path: Path, method: str, capsys: pytest.CaptureFixture[str]) -> None:
    overrides = [item for item in TINY if not item.startswith("teacher.module.")]
    config = load_config("unfused", overrides=[*overrides, f"teacher.method={method}", "teacher.module.hidden_dim=32",
                                               "finetune.labels_per_class=[1]", "finetune.seeds=[0]"])
    assert config["teacher"]["module"] == {"hidden_dim": 32}  # DeepCluster-v2's default settings are not inherited
    results = run_unfused(config, tmp_path, logger="none")
    assert {row["method"] for row in results["rows"]} == {"supervised", "ssl+finetune", "unfused"}
    names = {"simclr": "SimCLR", "byol": "BYOL", "dino": "DINO"}
    name = names.get(method, method.rsplit(".", 1)[-1])  # or by import path
    assert f"teacher: {name} on the unlabeled pool" in capsys.readouterr().out
    state = torch.load(tmp_path / "teacher" / "final.ckpt", weights_only=False)["state_dict"]
    if method == "byol":  # the EMATeacher the recipe adds moved the target network away from its start
        import lightning as L

        from fewlabel.datamodules import DigitsDataModule
        from fewlabel.plugins.recipes.unfused import build_teacher

        L.seed_everything(config["seed"], workers=True, verbose=False)  # as run_teacher does
        start = build_teacher(config, DigitsDataModule()).state_dict()
        name = "target_encoder.blocks.0.0.weight"
        assert torch.equal(start[name], start["encoder.blocks.0.0.weight"])  # the same start as the recipe's
        assert not torch.equal(state[name], start[name])


def test_lr_candidates_are_chosen_on_validation(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import shutil

    sweep = {"finetune.labels_per_class": "[1, 2]", "finetune.seeds": "[0, 1]", "finetune.lr_candidates": "[0.003, 0.3]"}
    written = run_unfused(tiny_config(**sweep), tmp_path / "sweep", logger="none")
    assert "learning rates chosen on the validation split" in capsys.readouterr().out
    assert len(written["runs"]) == 3 * 2 * 2 * 2  # every candidate trained
    assert (tmp_path / "sweep" / "finetune" / "unfused" / "lr0.3" / "lpc2_seed1.json").exists()
    assert len(written["lr_choices"]) == 6 and json.loads((tmp_path / "sweep" / "results.json").read_text()) == written
    for choice in written["lr_choices"]:
        runs = [r for r in written["runs"]
                if (r["method"], r["labels_per_class"]) == (choice["method"], choice["labels_per_class"])]
        val = {lr: sum(r["val_accuracy"] for r in runs if r["lr"] == lr) / 2 for lr in (0.003, 0.3)}
        assert choice["val_accuracy_mean"] == pytest.approx({f"{lr:g}": v for lr, v in val.items()})
        best = 0.003 if val[0.003] >= val[0.3] else 0.3  # ties go to the first candidate
        assert choice["lr"] == best
        row = next(r for r in written["rows"]
                   if (r["method"], r["labels_per_class"]) == (choice["method"], choice["labels_per_class"]))
        chosen = [r["test_accuracy"] for r in runs if r["lr"] == best]
        assert row["lr"] == best and row["accuracy_mean"] == pytest.approx(sum(chosen) / 2)
        assert f"{100 * row['accuracy_mean']:.2f} ± {100 * row['accuracy_std']:.2f} (lr {best:g})" in (
            tmp_path / "sweep" / "results.md").read_text()

    # a candidate's runs are the plain runs with that module.lr (the teacher and the student are reused)
    for stage in ("teacher", "student"):
        shutil.copytree(tmp_path / "sweep" / stage, tmp_path / "plain" / stage)
    plain = run_unfused(tiny_config(**{**sweep, "finetune.lr_candidates": "null", "finetune.module.lr": "0.3"}),
                        tmp_path / "plain", logger="none")
    assert "lr_choices" not in plain and all("lr" not in r for r in plain["runs"])
    assert [r["test_accuracy"] for r in plain["runs"]] == [r["test_accuracy"] for r in written["runs"] if r["lr"] == 0.3]

    for bad in ("[0.1, 0.1]", "[]", "[-0.1]", "[true]", "0.1"):
        with pytest.raises(RecipeError, match="lr_candidates must be null or a non-empty list of distinct"):
            run_unfused(tiny_config(**{"finetune.lr_candidates": bad}), tmp_path / "bad", logger="none")
    with pytest.raises(RecipeError, match="needs a labeled validation split.*val_fraction"):
        run_unfused(tiny_config(**{**sweep, "data.val_fraction": 0.0}), tmp_path / "noval", logger="none")
    assert not (tmp_path / "noval" / "teacher").exists()  # refused before anything trained


def test_wandb_logs_every_stage_in_one_group_with_the_table_and_pictures(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from fewlabel.plugins.recipes.build import wandb_group

    monkeypatch.setenv("WANDB_SILENT", "true")
    config = tiny_config(pictures="true", **{"finetune.labels_per_class": "[1]", "finetune.seeds": "[0]"})
    run_unfused(config, tmp_path, logger="wandb")  # offline: written under tmp_path/wandb
    runs = sorted(tmp_path.glob("wandb/offline-run-*"))
    assert len(runs) == 4  # teacher, student, the fine-tunes, results
    group = wandb_group(tmp_path)
    assert all(group.encode() in next(run.glob("run-*.wandb")).read_bytes() for run in runs)
    assert group != wandb_group(tmp_path / "other") and group.startswith(tmp_path.name)
    (results,) = [run for run in runs if list(run.glob("files/media/table/results_*.table.json"))]
    table = json.loads(next(results.glob("files/media/table/results_*.table.json")).read_text())
    assert table["columns"][:3] == ["method", "labels_per_class", "accuracy_mean"] and len(table["data"]) == 3
    images = {path.name.split("_0_")[0] for path in results.glob("files/media/images/*.png")}
    assert images == {"label_efficiency", "embeddings_teacher", "embeddings_student"}
    assert b"nredo" in next(results.glob("run-*.wandb")).read_bytes()  # the recipe's config, recorded in that run


def test_wandb_goes_online_only_for_a_logged_in_user(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The default logger is offline unless the user is logged in (an API key in the environment or in
    ~/.netrc, where `wandb login` writes it); WANDB_MODE decides over both. Nothing here touches the network."""
    from fewlabel.plugins.recipes.build import make_logger, wandb_logged_in

    for name in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_BASE_URL", "NETRC"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert not wandb_logged_in()
    netrc_file = tmp_path / ".netrc"
    netrc_file.write_text("machine api.wandb.ai\n  login user\n  password " + "k" * 40 + "\n")
    netrc_file.chmod(0o600)
    assert wandb_logged_in()
    monkeypatch.setenv("WANDB_BASE_URL", "https://wandb.example.org")  # a key for another host does not count
    assert not wandb_logged_in()
    monkeypatch.setenv("WANDB_API_KEY", "k" * 40)
    assert wandb_logged_in()
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert not wandb_logged_in()
    assert make_logger("wandb", tmp_path, "teacher", "unfused")._offline  # the experiment is never created here
    monkeypatch.setenv("WANDB_MODE", "online")
    assert not make_logger("wandb", tmp_path, "teacher", "unfused")._offline


def test_a_datamodule_by_import_path(tmp_path: Path) -> None:
    """data.name may be a class's import path (the user's own FewLabelDataModule), checked like a registered one."""
    from fewlabel.datamodules import DigitsDataModule
    from fewlabel.plugins.recipes import check_config
    from fewlabel.plugins.recipes.build import DATAMODULES, make_datamodule

    config = tiny_config(**{"data.name": "fewlabel.datamodules.DigitsDataModule"})
    check_config(config, DATAMODULES)
    assert isinstance(make_datamodule(config["data"]), DigitsDataModule)
    with pytest.raises(RecipeError, match=r"unknown key data\.batch_sise \(did you mean 'batch_size'\?\)"):
        check_config(tiny_config(**{"data.name": "fewlabel.datamodules.DigitsDataModule", "data.batch_sise": 3}),
                     DATAMODULES)
