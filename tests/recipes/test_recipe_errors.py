"""Bad configurations, data and run folders fail fast, in one line, before anything trains."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from fewlabel.plugins.recipes import RecipeError, check_config, load_config, run_unfused
from fewlabel.plugins.recipes.build import DATAMODULES
from fewlabel.plugins.recipes.cli import main
from fewlabel.plugins.recipes.stage import hold_run_folder

TINY = [
    "teacher.encoder.width=4", "teacher.module.hidden_dim=32", "teacher.module.feat_dim=16",
    "teacher.trainer.max_epochs=2", "student.encoder.width=4", "student.trainer.max_epochs=1",
    "finetune.labels_per_class=[1]", "finetune.seeds=[0]", "finetune.trainer.max_epochs=1", "pictures=false",
]


def tiny(*extra: str) -> dict[str, Any]:
    return load_config("unfused", overrides=TINY + list(extra))


def image_folder(root: Path, per_class: dict[str, int], mode: str = "RGB") -> Path:
    rng = np.random.default_rng(0)
    for name, count in per_class.items():
        (root / name).mkdir(parents=True)
        for i in range(count):
            shape = (8, 8, 3) if mode == "RGB" else (8, 8)
            Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8), mode).save(root / name / f"{i}.png")
    return root


@pytest.mark.parametrize(("override", "message"), [
    ("finetune.trainer.max_epoch=3", r"unknown key finetune\.trainer\.max_epoch \(did you mean 'max_epochs'\?\)"),
    ("techer.module.lr=0.1", r"unknown key config\.techer \(did you mean 'teacher'\?\)"),
    ("student.module.aux_ce_wieght=0.5", r"student\.module\.aux_ce_wieght \(did you mean 'aux_ce_weight'\?\)"),
    ("teacher.module.lr=fast", r"teacher\.module\.lr must be float, got str 'fast'"),
    ("data.batch_size=3.5", r"data\.batch_size must be int, got float 3\.5"),
    ("finetune.labels_per_class=[0, 5]", r"finetune\.labels_per_class must be a non-empty list of ints >= 1"),
    ("finetune.seeds=3", r"finetune\.seeds must be a non-empty list of ints >= 0, got 3"),
    ("finetune.seeds=[0, -1]", r"finetune\.seeds must be a non-empty list of ints >= 0"),
    ("seed=-1", r"seed must be an int >= 0, got -1"),
    ("num_threads=0", r"num_threads must be an int >= 1 or null \(torch's default\), got 0"),
    ("pictures=maybe", r"pictures must be true or false, got 'maybe'"),
    ("data.root=/somewhere", r"data\.root is not used by data\.name='digits'.*--data\.name image_folder"),
    ("trainer.logger=false", r"trainer\.logger is set by the recipe \(choose it with --logger\)"),
    ("finetune.methods.unfused.encoder_from=teachr", r"encoder_from must be one of \['teacher', 'student', 'scratch'\]"),
    ("teacher.encoder.name=small_cn", r"unknown encoder 'small_cn' \(did you mean 'small_cnn'\?\)"),
    ("trainer.precision=half", r"trainer\.precision must be .*'bf16-mixed'.*, got str 'half'"),
    ("trainer.max_epochs=3.5", r"trainer\.max_epochs must be int \| None, got float 3\.5"),
    ("pseudo_labels.pca_dim_candidates=8", r"pseudo_labels\.pca_dim_candidates must be Sequence, got int 8"),
    ("teacher.ema.base_momentum=high", r"teacher\.ema\.base_momentum must be float, got str 'high'"),
    ("student.encoder.width=wide", r"student\.encoder\.width must be int, got str 'wide'"),
    ("teacher.augment.hflip=0.5", None),
    ("student.encoder.checkpoint=t.ckpt", r"student\.encoder\.checkpoint: the recipe trains its encoders itself"),
    ("teacher.augment={name: image, hflip: sometimes}", r"teacher\.augment\.hflip must be float, got str 'sometimes'"),
])
def test_config_errors_name_the_key(override: str, message: str | None) -> None:
    if message is None:  # a valid change, for contrast
        check_config(tiny(override), DATAMODULES)
        return
    with pytest.raises(RecipeError, match=message):
        check_config(tiny(override), DATAMODULES)


def test_values_are_checked_by_jsonargparse_and_read_as_it_reads_them() -> None:
    """YAML leaves ``1e-3`` a string; jsonargparse reads it as the float the signature asks for, and the
    constructor then receives that float. A timm encoder's own keyword arguments pass through unchecked."""
    config = tiny("teacher.module.lr=1e-3", "finetune.trainer.max_epochs='2'", "data.val_fraction=1e-1")
    check_config(config, DATAMODULES)
    assert config["teacher"]["module"]["lr"] == 0.001 and config["finetune"]["trainer"]["max_epochs"] == 2
    assert config["data"]["val_fraction"] == 0.1
    check_config(tiny("teacher.encoder={name: 'timm:resnet18', drop_rate: 0.1, in_chans: 1}"), DATAMODULES)
    with pytest.raises(RecipeError, match=r"teacher\.encoder\.in_chans must be int \| None, got str 'one'"):
        check_config(tiny("teacher.encoder={name: 'timm:resnet18', in_chans: one}"), DATAMODULES)


def test_shipped_configs_pass_the_check() -> None:
    check_config(load_config("unfused"), DATAMODULES)
    for path in sorted(Path(__file__).parents[2].glob("examples/*.yaml")):
        config = load_config("unfused", path)
        if config["data"]["name"] != "digits":
            config["data"]["root"] = "/data"
        check_config(config, DATAMODULES)


def test_a_typo_in_the_last_stage_fails_before_the_first_trains(tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match="max_epoch"):
        run_unfused(tiny("finetune.trainer.max_epoch=3"), tmp_path, logger="none")
    assert not (tmp_path / "teacher").exists() and not (tmp_path / "config.yaml").exists()


@pytest.mark.parametrize(("overrides", "message"), [
    (["finetune.labels_per_class=[1, 200]"], r"class '\d' has only \d+ training samples"),
    (["trainer.accelerator=gpu"], r"^trainer: .*gpu.*\(accelerators on this machine: cpu"),
    (["teacher.encoder.in_chans=3"], r"teacher\.encoder: SmallCNN expects 3 input channels"),
    (["student.module.lr=-1.0"], r"^student: "),
])
def test_data_and_machine_problems_fail_before_training(tmp_path: Path, overrides: list[str], message: str) -> None:
    with pytest.raises(RecipeError, match=message):
        run_unfused(tiny(*overrides), tmp_path, logger="none")
    assert not (tmp_path / "teacher").exists()


def test_folder_data_problems_name_the_class_folder(tmp_path: Path) -> None:
    rgb = image_folder(tmp_path / "rgb", {"cat": 10, "dog": 10})
    with pytest.raises(RecipeError, match=r"3-channel images .* teacher\.encoder\.in_chans is 1.*--data\.channels 1"):
        run_unfused(tiny("data.name=image_folder", f"data.root={rgb}", "data.image_size=8", "data.channels=3",
                         "teacher.encoder.in_chans=1"), tmp_path / "out", logger="none")
    single = image_folder(tmp_path / "single", {"cat": 10, "dog": 1})
    with pytest.raises(RecipeError, match=r"class '.*dog' has a single sample"):
        run_unfused(tiny("data.name=image_folder", f"data.root={single}", "data.channels=1"), tmp_path / "o2",
                    logger="none")
    one = image_folder(tmp_path / "one", {"cat": 6})
    with pytest.raises(RecipeError, match=r"at least 2 classes"):
        run_unfused(tiny("data.name=image_folder", f"data.root={one}", "data.channels=1"), tmp_path / "o3",
                    logger="none")
    few = image_folder(tmp_path / "few", {"cat": 12, "dog": 12})
    with pytest.raises(RecipeError, match=r"labels_per_class=9 is too many: class '(cat|dog)' has only"):
        run_unfused(tiny("data.name=image_folder", f"data.root={few}", "data.channels=1",
                         "finetune.labels_per_class=[1, 9]"), tmp_path / "o4", logger="none")


def test_a_run_that_fails_before_any_result_does_not_block_its_folder(tmp_path: Path) -> None:
    with pytest.raises(FloatingPointError, match="stage 'teacher'"):
        run_unfused(tiny("teacher.module.lr=1.0e+30", "teacher.module.warmup_fraction=0.0"), tmp_path, logger="none")
    assert not (tmp_path / "teacher" / "last.ckpt").exists()
    results = run_unfused(tiny(), tmp_path, logger="none")  # the corrected rerun is not refused
    assert len(results["rows"]) == 3


def test_truncated_checkpoint_is_a_one_line_error(tmp_path: Path) -> None:
    (tmp_path / "teacher").mkdir(parents=True)
    (tmp_path / "teacher" / "last.ckpt").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(RecipeError, match=r"teacher/last\.ckpt is unreadable \(truncated or corrupt.*delete it"):
        run_unfused(tiny(), tmp_path, logger="none")


def test_a_folder_held_by_a_running_command_is_refused(tmp_path: Path) -> None:
    with hold_run_folder(tmp_path):
        with pytest.raises(RecipeError, match=r"in use by a running fewlabel command \(pid \d+\)"):
            run_unfused(tiny(), tmp_path, logger="none")
    with hold_run_folder(tmp_path):  # released when the holder ends
        pass


def test_cli_prints_one_line_without_traceback_and_debug_shows_it(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("teacher:\n  trainer: {max_epochs: 3\n")
    with pytest.raises(SystemExit) as exit_info:
        main(["run", "unfused", "--config", str(bad), "--output", str(tmp_path / "out")])
    message = str(exit_info.value.code)
    assert message.startswith("fewlabel: error: config file") and str(bad) in message and "line 3" in message
    assert "\n" not in message
    with pytest.raises(RecipeError):
        main(["run", "unfused", "--config", str(bad), "--debug"])


def test_cli_overrides_top_level_and_recipe_set_trainer_keys(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    args = [arg for item in TINY for arg in ("--" + item.split("=", 1)[0], item.split("=", 1)[1])]
    assert main(["run", "unfused", "--output", str(tmp_path), "--logger", "none", *args, "--seed", "3",
                 "--trainer.enable_progress_bar", "false"]) == 0
    saved = load_config("unfused", tmp_path / "config.yaml")
    assert saved["seed"] == 3 and saved["trainer"]["enable_progress_bar"] is False
    assert json.loads((tmp_path / "teacher" / "settings.json").read_text())["seed"] == 3
    assert "Epoch 0" not in capsys.readouterr().err  # no progress bar


def test_a_stage_checkpoint_that_does_not_fit_the_module_is_named(tmp_path: Path) -> None:
    """A finished stage's weights from another architecture (another fewlabel version) end in one line with the
    remedy, not in torch's load_state_dict error."""
    import torch

    from fewlabel.plugins import Classifier
    from fewlabel.plugins.recipes.stage import load_weights

    torch.save({"state_dict": Classifier({"name": "small_cnn", "width": 8}, num_classes=3).state_dict()},
               tmp_path / "final.ckpt")
    with pytest.raises(RecipeError, match=r"do not fit the module this configuration builds: size mismatch .*"
                                          r"\(written by another fewlabel version\?\); delete .* to recompute"):
        load_weights(Classifier({"name": "small_cnn", "width": 4}, num_classes=3), tmp_path / "final.ckpt")
