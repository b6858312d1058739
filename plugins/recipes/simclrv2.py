"""The SimCLRv2 recipe (Chen et al., 2020, arXiv 2006.10029): pretrain, fine-tune, distil.

1. ``teacher``: self-supervised pretraining of the bigger encoder on the unlabeled pool (SimCLR by
   default, any method of the zoo with ``teacher.method``): the UnFuSeD recipe's stage 1, same code,
   same settings, same folder layout.
2. ``finetune``: for every label budget and label draw, the teacher + a linear head learns the labels
   (UnFuSeD's ``ssl+finetune`` runs, the same code path and settings), beside the ``supervised``
   baseline (the student architecture from scratch).
3. ``distill``: for every budget and draw, a fresh smaller student (``student.encoder``) learns the
   softened predictions of that draw's fine-tuned teacher on the unlabeled pool
   (:class:`~fewlabel.plugins.methods.KnowledgeDistillation`); its test accuracy is the ``simclrv2`` row.

Every stage writes its result into the run folder (the fine-tuned teachers' weights next to their
result files, ``finetune/ssl+finetune/lpc{k}_seed{s}.ckpt``; each distillation in
``distill/lpc{k}_seed{s}/`` with its ``result.json``); the same command reuses finished stages and
resumes an interrupted one from its last checkpoint.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import nn

from fewlabel.datamodules import FewLabelDataModule
from fewlabel.plugins.methods import Classifier, KnowledgeDistillation
from fewlabel.plugins.recipes.build import DATAMODULES, make_logger, make_trainer
from fewlabel.plugins.recipes.stage import (
    check_settings, fit_stage, is_rank_zero, replace_atomically, stored_settings, write_json,
)
from fewlabel.plugins.recipes.unfused import (
    TEACHER_KEYS, _augment, _checked, _say, _settings, build_classifier, finetune_runs, preflight_classifier,
    preflight_data, preflight_teacher, preflight_trainers, prepared_run, publish_results, run_finetune, run_teacher,
    summarise,
)
from fewlabel.plugins.recipes.validate import RecipeError, check_config

#: The fine-tune method whose classifiers (the fine-tuned teachers) are distilled.
TEACHER_METHOD = "ssl+finetune"
#: The results' name of the distilled students.
METHOD = "simclrv2"
RESULT = "result.json"


def check_simclrv2_config(config: Any) -> None:
    """:func:`check_config` for SimCLRv2, and the fine-tune method the distillation needs.

    Raises:
        RecipeError: naming the key.
    """
    check_config(config, DATAMODULES, recipe="simclrv2")
    methods = config["finetune"]["methods"]
    if METHOD in methods:
        raise RecipeError(f"finetune.methods.{METHOD}: that name is the distilled students' row; rename the method")
    spec = methods.get(TEACHER_METHOD)
    if not isinstance(spec, dict) or spec.get("encoder_from") != "teacher":
        raise RecipeError(f"finetune.methods.{TEACHER_METHOD} must be {{encoder_from: teacher}}: its fine-tuned "
                          f"teachers are what the students distil")


def _finetune_config(config: dict[str, Any]) -> dict[str, Any]:
    """The configuration the fine-tune runs see: all but ``distill`` (their results do not depend on it)."""
    return {key: value for key, value in config.items() if key != "distill"}


def distill_runs(config: dict[str, Any],
                 output: Path) -> Iterator[tuple[int, int, dict[str, Any], dict[str, Any], Path]]:
    """Every distillation: ``(labels_per_class, seed, teacher's fine-tune spec, settings, stage folder)``.

    A distillation depends on everything its fine-tuned teacher does, plus ``distill``.
    """
    for method, k, seed, spec, settings, _ in finetune_runs(_finetune_config(config), output):
        if method == TEACHER_METHOD:
            folder = output / "distill" / f"lpc{k}_seed{seed}"
            yield k, seed, spec, {**settings, **_settings(config, ("distill",))}, folder


def _teacher_file(output: Path, k: int, seed: int) -> Path:
    """Where the fine-tuned teacher of draw ``(k, seed)`` keeps its weights (next to its result file)."""
    return output / "finetune" / TEACHER_METHOD / f"lpc{k}_seed{seed}.ckpt"


def plan_stages(config: dict[str, Any], output: Path) -> list[tuple[str, Path, dict[str, Any] | None, dict[str, Any]]]:
    """``(name, path, stored settings, settings)`` of every stage and run, for the up-front check."""
    stages = [("teacher", output / "teacher", stored_settings(output / "teacher"), _settings(config, TEACHER_KEYS))]
    for method, k, seed, _, settings, path in finetune_runs(_finetune_config(config), output):
        stored = json.loads(path.read_text()).get("settings") if path.exists() else None
        stages.append((f"finetune {method} {k} labels/class draw {seed}", path, stored, settings))
    for k, seed, _, settings, folder in distill_runs(config, output):
        stages.append((f"distill {k} labels/class draw {seed}", folder, stored_settings(folder), settings))
    return stages


def build_distillation(config: dict[str, Any], dm: FewLabelDataModule, teacher: nn.Module) -> KnowledgeDistillation:
    """Stage 3's module: a fresh ``student.encoder`` + a linear head that learns ``teacher``'s predictions."""
    cfg = config["distill"]
    return KnowledgeDistillation(teacher, config["student"]["encoder"], num_classes=dm.num_classes,
                                 augment=_augment(cfg.get("augment")), **(cfg.get("module") or {}))


def _distill_loaders(config: dict[str, Any], dm: FewLabelDataModule) -> Any:
    """The pool (labels hidden); with ``label_weight > 0`` also the labeled draw, for its cross-entropy."""
    if (config["distill"].get("module") or {}).get("label_weight"):
        return [dm.unlabeled_dataloader(), dm.labeled_dataloader()]
    return dm.unlabeled_dataloader()


def preflight(config: dict[str, Any], dm: FewLabelDataModule) -> None:
    """Build every module and trainer once and push two samples of the real data through each.

    Raises:
        RecipeError: naming the section whose settings do not fit the data or this machine.
    """
    finetune = _finetune_config(config)
    batch, hint = preflight_data(config, dm)
    with preflight_trainers(config, ("teacher", "distill")), torch.no_grad():
        teacher = preflight_teacher(config, dm, batch, hint)
        encoders = {"teacher": teacher.encoder}
        classifiers = {method: preflight_classifier(finetune, dm, method, spec, encoders, batch, hint)
                       for method, _, _, spec, _, _ in finetune_runs(finetune, Path())}
        student = _checked("distill", lambda: build_distillation(config, dm, classifiers[TEACHER_METHOD]).eval())
        view = _checked("student.encoder", lambda: student.views(batch, 1)[0], hint)
        _checked("distill", lambda: student.loss(student.head(student.embed(view)), student.teacher_logits(view)), hint)


def _save_teacher(path: Path, state: dict[str, torch.Tensor], settings: dict[str, Any]) -> None:
    if is_rank_zero():
        path.parent.mkdir(parents=True, exist_ok=True)
        replace_atomically(path, lambda tmp: torch.save({"state_dict": state, "settings": settings}, tmp))


def _stored_teacher(path: Path, settings: dict[str, Any]) -> dict[str, torch.Tensor] | None:
    """The fine-tuned teacher's weights stored at ``path`` under ``settings``, else ``None``."""
    if not path.exists():
        return None
    stored = torch.load(path, map_location="cpu", weights_only=False)
    return stored["state_dict"] if json.dumps(stored.get("settings"), sort_keys=True) == json.dumps(
        settings, sort_keys=True) else None


def _refit_lost_teachers(config: dict[str, Any], output: Path) -> None:
    """Delete the result file of each fine-tuned teacher that a pending distillation needs but whose weights
    are not stored (or were stored under other settings), so that :func:`run_finetune` fits it again."""
    settings = {(k, seed): s for m, k, seed, _, s, _ in finetune_runs(_finetune_config(config), output)
                if m == TEACHER_METHOD}
    for k, seed, _, _, folder in distill_runs(config, output):
        result = output / "finetune" / TEACHER_METHOD / f"lpc{k}_seed{seed}.json"
        if (folder / RESULT).exists() or not result.exists():
            continue
        if _stored_teacher(_teacher_file(output, k, seed), settings[(k, seed)]) is None and is_rank_zero():
            _say(f"  {TEACHER_METHOD} {k} labels/class draw {seed}: its weights are not stored, fitting it again")
            result.unlink()


def _evaluate(config: dict[str, Any], module: L.LightningModule, dm: FewLabelDataModule) -> tuple[float, float]:
    """Validation and test accuracy (``nan`` validation accuracy without a validation split)."""
    trainer = make_trainer(config, config["distill"].get("trainer") or {}, logger=False, callbacks=[], progress=False,
                           checkpoint=False)
    val_loader = dm.val_dataloader()
    val = trainer.validate(module, val_loader, verbose=False)[0]["val/acc"] if len(val_loader) else float("nan")
    return float(val), float(trainer.test(module, dm.test_dataloader(), verbose=False)[0]["test/acc"])


def run_distill(config: dict[str, Any], dm: FewLabelDataModule, teacher_encoder: nn.Module,
                finetuned: dict[tuple[int, int], dict[str, torch.Tensor]], output: Path,
                logger: str) -> list[dict[str, Any]]:
    """Stage 3: one student per label budget and draw distils that draw's fine-tuned teacher."""
    runs = list(distill_runs(config, output))
    _say(f"stage 3/3 distillation: a fresh student per label budget and draw learns the fine-tuned teacher's "
         f"predictions on the unlabeled pool ({len(runs)} runs)")
    cfg, finetune = config["distill"], _finetune_config(config)
    lightning_log = logging.getLogger("lightning.pytorch")
    level = lightning_log.level
    lightning_log.setLevel(logging.WARNING)  # many short stages: keep the console readable
    rows = []
    for i, (k, seed, spec, settings, folder) in enumerate(runs, 1):
        result = folder / RESULT
        if result.exists():
            row = json.loads(result.read_text())
            check_settings(result, row.get("settings"), settings)
            rows.append(row)
            continue
        view = dm.with_labels(k, seed)
        state = finetuned.get((k, seed))
        if state is None:  # fitted by an earlier command: its settings are the distillation's but `distill`
            teacher_settings = {key: value for key, value in settings.items() if key != "distill"}
            state = _stored_teacher(_teacher_file(output, k, seed), teacher_settings)
        if state is None:
            raise RecipeError(f"the weights of {TEACHER_METHOD} {k} labels/class draw {seed} are missing; rerun the "
                              f"command to fit it again")
        teacher = build_classifier(finetune, view, spec, {"teacher": teacher_encoder})
        teacher.load_state_dict(state)
        L.seed_everything(seed, workers=True, verbose=False)  # the student starts as the `supervised` one does
        module = build_distillation(config, view, teacher)

        def trainer(callbacks: list[L.Callback], k: int = k, seed: int = seed) -> L.Trainer:
            return make_trainer(config, cfg.get("trainer") or {}, callbacks=callbacks,
                                logger=make_logger(logger, output, f"lpc{k}-seed{seed}", "distill"),
                                progress=False, checkpoint=True)

        start = time.perf_counter()
        module, _, _ = fit_stage(folder, module, lambda view=view: _distill_loaders(config, view), trainer, [],
                                 settings)
        val, test = _evaluate(config, module, view)
        row = {"method": METHOD, "labels_per_class": k, "seed": seed, "val_accuracy": val, "test_accuracy": test,
               "params": module.student_parameters(), "seconds": time.perf_counter() - start, "settings": settings}
        if is_rank_zero():
            write_json(result, row)
        rows.append(row)
        _say(f"  [{i}/{len(runs)}] {METHOD:<14} {k:>3} labels/class, draw {seed}: test accuracy {test:.4f}")
    lightning_log.setLevel(level)
    return rows


def _keep_teachers(config: dict[str, Any], output: Path, finetuned: dict[tuple[int, int], dict[str, torch.Tensor]],
                   ) -> Callable[[dict[str, Any], Classifier], None]:
    """A :func:`run_finetune` hook that keeps (in ``finetuned`` and on disk) every fine-tuned teacher's weights."""
    settings = {(k, seed): s for m, k, seed, _, s, _ in finetune_runs(_finetune_config(config), output)
                if m == TEACHER_METHOD}

    def keep(row: dict[str, Any], classifier: Classifier) -> None:
        if row["method"] != TEACHER_METHOD:
            return
        key = (row["labels_per_class"], row["seed"])
        state = {name: value.detach().cpu().clone() for name, value in classifier.state_dict().items()}
        finetuned[key] = state
        _save_teacher(_teacher_file(output, *key), state, settings[key])

    return keep


def run_simclrv2(config: dict[str, Any], output: str | Path, logger: str = "wandb",
                 recompute: bool = False) -> dict[str, Any]:
    """Run the whole recipe into ``output`` and return (and write) ``results.json``'s content.

    Before anything trains, the configuration is checked against the constructors it feeds, the run
    folder is locked, the data are loaded, every module and trainer is built once with two real
    samples pushed through it, and the run folder is checked for results made with other settings.
    Only then is ``config.yaml`` written.

    Args:
        config: The merged configuration (``load_config("simclrv2", ...)``).
        output: The run folder.
        logger: ``wandb`` (offline unless logged in to wandb), ``wandb-online``, ``csv`` or ``none``.
        recompute: Delete and recompute stages stored with other settings instead of refusing.

    Returns:
        ``{"recipe", "dataset", "rows", "runs", "seconds"}``: ``rows`` as
        :func:`~fewlabel.plugins.recipes.unfused.summarise` gives them, for ``supervised``,
        ``ssl+finetune`` and ``simclrv2``.

    Raises:
        RecipeError: a configuration, data or run-folder problem, found before anything trains.
    """
    output = Path(output)
    check_simclrv2_config(config)
    start = time.perf_counter()
    with prepared_run(config, output, preflight, plan_stages, recompute) as dm:
        _say(f"SimCLRv2 on {config['data'].get('name', 'digits')}: {dm.num_classes} classes, {dm.num_unlabeled} "
             f"unlabeled training samples; teacher -> fine-tune -> distillation")
        finetune = _finetune_config(config)
        teacher = run_teacher(finetune, dm, output, logger, recipe=METHOD, stage="stage 1/3")
        _refit_lost_teachers(config, output)
        finetuned: dict[tuple[int, int], dict[str, torch.Tensor]] = {}
        encoders = {"teacher": teacher.encoder}
        runs = run_finetune(finetune, dm, encoders, output, logger, trained=_keep_teachers(config, output, finetuned),
                            recipe=METHOD, stage="stage 2/3")
        runs += run_distill(config, dm, teacher.encoder, finetuned, output, logger)
        results = {"recipe": METHOD, "dataset": config["data"].get("name", "digits"), "rows": summarise(runs),
                   "runs": [{key: value for key, value in r.items() if key != "settings"} for r in runs],
                   "seconds": time.perf_counter() - start}
        publish_results(config, output, logger, METHOD, results)
        return results
