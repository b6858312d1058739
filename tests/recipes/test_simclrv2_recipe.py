"""The SimCLRv2 recipe end to end on the digits data (tiny epochs): CLI, reuse, config errors and resume."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch

import fewlabel.plugins.recipes.simclrv2 as simclrv2
from fewlabel.plugins.recipes import RecipeError, check_config, load_config, run_simclrv2
from fewlabel.plugins.recipes.build import DATAMODULES
from fewlabel.plugins.recipes.cli import main

TINY = {
    "num_threads": "1", "teacher.encoder.width": "6", "teacher.module.hidden_dim": "32",
    "teacher.module.out_dim": "16", "teacher.trainer.max_epochs": "2", "student.encoder.width": "4",
    "finetune.labels_per_class": "[1, 2]", "finetune.seeds": "[0, 1]", "finetune.trainer.max_epochs": "3",
    "distill.trainer.max_epochs": "2",
}
METHODS = {"supervised", "ssl+finetune", "simclrv2"}


def tiny_config(**extra: Any) -> dict[str, Any]:
    return load_config("simclrv2", overrides=[f"{k}={v}" for k, v in {**TINY, **extra}.items()])


def _cli(*args: str) -> list[str]:
    return ["run", "simclrv2", "--logger", "none", *args, *(part for k, v in TINY.items() for part in (f"--{k}", v))]


def _mtimes(folder: Path, pattern: str) -> dict[str, int]:
    """Modification times of the results and checkpoints under ``folder`` (the stage runner rewrites a
    reused stage's ``settings.json``, which only describes the folder)."""
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in sorted(folder.glob(pattern))
            if p.name != "settings.json"}


def test_cli_run_writes_every_method_and_a_rerun_reuses_every_stage(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(_cli()) == 0  # default output: runs/simclrv2
    out = tmp_path / "runs" / "simclrv2"
    written = json.loads((out / "results.json").read_text())
    assert (out / "label_efficiency.png").read_bytes()[:4] == b"\x89PNG" and (out / "results.md").exists()
    assert written["recipe"] == "simclrv2" and written["dataset"] == "digits"
    rows = {(r["method"], r["labels_per_class"]): r for r in written["rows"]}
    assert set(rows) == {(m, k) for m in METHODS for k in (1, 2)}
    for row in rows.values():
        assert 0.0 <= row["accuracy_mean"] <= 1.0 and row["num_draws"] == 2
    assert rows[("simclrv2", 1)]["params"] == rows[("supervised", 1)]["params"] < rows[("ssl+finetune", 1)]["params"]
    assert len(written["runs"]) == 12
    for run in written["runs"]:
        assert {"method", "labels_per_class", "seed", "val_accuracy", "test_accuracy", "params"} <= set(run)
    assert "simclrv2" in capsys.readouterr().out  # the printed table
    # one result per finished run; the fine-tuned teachers' weights beside theirs
    assert len(list(out.glob("finetune/*/*.json"))) == 8 and len(list(out.glob("distill/*/result.json"))) == 4
    assert len(list(out.glob("finetune/ssl+finetune/*.ckpt"))) == 4
    distill_result = json.loads((out / "distill" / "lpc2_seed1" / "result.json").read_text())
    assert distill_result["method"] == "simclrv2" and distill_result["settings"]["distill"]["trainer"]["max_epochs"] == 2

    stages = _mtimes(out, "*/**/*.*[nt]")  # every stage's .json and .ckpt file
    again = run_simclrv2(tiny_config(), out, logger="none")
    assert "reused the finished teacher" in capsys.readouterr().out
    assert _mtimes(out, "*/**/*.*[nt]") == stages  # nothing was written again
    assert again["rows"] == written["rows"]

    # another distillation setting makes only the distillations stale; --recompute redoes them alone
    hotter = tiny_config(**{"distill.module.temperature": "2.0"})
    with pytest.raises(RecipeError, match=r"^4 finished .*distill 1 labels/class draw 0 \(differs at: "
                                          r"distill\.module\.temperature\)"):
        run_simclrv2(hotter, out, logger="none")
    recomputed = run_simclrv2(hotter, out, logger="none", recompute=True)
    assert _mtimes(out, "finetune/*/*") == {k: v for k, v in stages.items() if k.startswith("finetune/")}
    assert [r for r in recomputed["runs"] if r["method"] != "simclrv2"] == \
        [r for r in again["runs"] if r["method"] != "simclrv2"]

    # a lost fine-tuned teacher is fitted again (to the same weights) when a distillation still needs it
    (out / "finetune" / "ssl+finetune" / "lpc1_seed0.ckpt").unlink()
    for path in (out / "distill" / "lpc1_seed0").iterdir():
        path.unlink()
    refitted = run_simclrv2(hotter, out, logger="none")
    assert "its weights are not stored, fitting it again" in capsys.readouterr().out
    assert (out / "finetune" / "ssl+finetune" / "lpc1_seed0.ckpt").exists()
    assert refitted["rows"] == recomputed["rows"]


@pytest.mark.parametrize(("override", "message"), [
    ("distill.module.temprature=2.0", r"unknown key distill\.module\.temprature \(did you mean 'temperature'\?\)"),
    ("distill.trainer.max_epoch=3", r"unknown key distill\.trainer\.max_epoch \(did you mean 'max_epochs'\?\)"),
    ("distill.modul.lr=0.1", r"unknown key distill\.modul \(did you mean 'module'\?\)"),
    ("distill.module.teacher=x", r"distill\.module\.teacher is set by the recipe itself"),
    ("distill.module.temperature=hot", r"distill\.module\.temperature must be float, got str 'hot'"),
    ("student.augment={name: image}", r"unknown key student\.augment"),
    ("pseudo_labels.pca_dim=16", r"unknown key config\.pseudo_labels"),
    ("distil.module.lr=0.1", r"unknown key config\.distil \(did you mean 'distill'\?\)"),
    ("finetune.methods.ssl+finetune.encoder_from=student", r"encoder_from must be one of \['teacher', 'scratch'\]"),
    ("teacher.method=simclrr", r"teacher\.method: .*'simclrr' \(did you mean 'simclr'\?\)"),
    ("finetune.lr_candidates=[0.001, 0.01]", r"finetune\.lr_candidates is not supported by the simclrv2 recipe"),
    ("distill.module.teacher_checkpoint=t.ckpt", r"distill\.module\.teacher_checkpoint is set by the recipe itself"),
])
def test_config_errors_name_the_closest_key(override: str, message: str) -> None:
    config = load_config("simclrv2", overrides=[f"{k}={v}" for k, v in TINY.items()] + [override])
    with pytest.raises(RecipeError, match=message):
        simclrv2.check_simclrv2_config(config)


def test_the_packaged_config_passes_and_the_distilled_row_needs_its_teacher(tmp_path: Path) -> None:
    check_config(load_config("simclrv2"), DATAMODULES, recipe="simclrv2")
    simclrv2.check_simclrv2_config(load_config("simclrv2"))
    assert load_config("simclrv2")["teacher"]["method"] == "simclr"
    without = tiny_config()
    del without["finetune"]["methods"]["ssl+finetune"]
    with pytest.raises(RecipeError, match=r"finetune\.methods\.ssl\+finetune must be \{encoder_from: teacher\}"):
        simclrv2.check_simclrv2_config(without)
    with pytest.raises(RecipeError, match=r"finetune\.methods\.simclrv2: that name is the distilled students' row"):
        simclrv2.check_simclrv2_config(tiny_config(**{"finetune.methods.simclrv2": "{encoder_from: teacher}"}))
    # a typo in the last stage fails before the first trains
    with pytest.raises(SystemExit, match=r"unknown key distill\.trainer\.max_epoch"):
        main(_cli("--output", str(tmp_path), "--distill.trainer.max_epoch", "3"))
    assert not (tmp_path / "teacher").exists() and not (tmp_path / "config.yaml").exists()
    # so does a value the distillation's module refuses (the preflight builds it with a fine-tuned teacher)
    with pytest.raises(RecipeError, match=r"^distill: .*lr"):
        run_simclrv2(tiny_config(**{"distill.module.lr": "-1.0"}), tmp_path, logger="none")
    assert not (tmp_path / "teacher").exists() and not (tmp_path / "config.yaml").exists()


def test_a_killed_distillation_resumes_to_the_uninterrupted_result(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    config = tiny_config(**{"finetune.labels_per_class": "[1]", "finetune.seeds": "[0]",
                            "distill.trainer.max_epochs": "3"})
    full = run_simclrv2(config, tmp_path / "full", logger="none")

    class Crash(Exception):
        pass

    class CrashAtEpoch2(L.Callback):
        def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
            if trainer.current_epoch == 2:
                raise Crash("simulated crash in the distillation")

    original = simclrv2.make_trainer  # the distillation's trainers (the teacher and fine-tune stages use unfused's)

    def crashing_trainer(*args: Any, **kwargs: Any) -> Any:
        kwargs["callbacks"] = [*kwargs["callbacks"], CrashAtEpoch2()]
        return original(*args, **kwargs)

    monkeypatch.setattr(simclrv2, "make_trainer", crashing_trainer)
    with pytest.raises(Crash):
        run_simclrv2(config, tmp_path / "part", logger="none")
    stage = tmp_path / "part" / "distill" / "lpc1_seed0"
    assert (stage / "last.ckpt").exists() and not (stage / "final.ckpt").exists()
    monkeypatch.setattr(simclrv2, "make_trainer", original)
    resumed = run_simclrv2(config, tmp_path / "part", logger="none")

    ours = torch.load(stage / "final.ckpt", weights_only=False)["state_dict"]
    theirs = torch.load(tmp_path / "full" / "distill" / "lpc1_seed0" / "final.ckpt", weights_only=False)["state_dict"]
    assert ours.keys() == theirs.keys()
    for name, value in theirs.items():
        assert torch.allclose(value.float(), ours[name].float(), atol=1e-6), name
    assert [r["test_accuracy"] for r in resumed["runs"]] == [r["test_accuracy"] for r in full["runs"]]
