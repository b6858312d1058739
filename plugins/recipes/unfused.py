"""The UnFuSeD recipe (Ghosh et al., 2023, arXiv 2303.05668) as four composed Lightning stages.

1. ``teacher``: DeepCluster-v2 SSL on the unlabeled pool.
2. pseudo-labels: :class:`~fewlabel.callbacks.PseudoLabeler` runs the frozen teacher encoder over the
   pool (no augmentation), PCA-whitening, L2 normalisation, faiss k-means.
3. ``student``: a fresh, smaller encoder learns the pseudo-labels by multi-exit self-distillation.
4. ``finetune``: each method's encoder + a linear head learns the few labels, for every label budget
   and label draw; test accuracy is measured on the held-out test split.

Every stage writes its result into the run folder; running the same command again reuses finished
stages and resumes an interrupted one from its last checkpoint.
"""

from __future__ import annotations

import copy
import json
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import yaml
from lightning.pytorch.callbacks import LambdaCallback
from lightning.pytorch.loggers import Logger
from lightning.pytorch.utilities import rank_zero_only
from torch import Tensor, nn

from fewlabel.callbacks import PseudoLabeler
from fewlabel.datamodules import FewLabelDataModule
from fewlabel.plugins.augment import create_augment
from fewlabel.callbacks import EMATeacher
from fewlabel.plugins.methods import METHODS, Classifier, ClassifierEnsemble, Method, SelfDistillation
from fewlabel.plugins.augment.views import make_views
from fewlabel.plugins.encoders.base import build_encoder
from fewlabel.plugins.gather import gather_embeddings
from fewlabel.plugins.recipes.build import DATAMODULES, close_logger, make_datamodule, make_logger, make_trainer
from fewlabel.plugins.recipes.config import merge
from fewlabel.plugins.recipes.report import log_results, plot_embedding_map, plot_label_efficiency, write_tables
from fewlabel.plugins.recipes.stage import (
    check_run_folder, check_settings, fit_stage, hold_run_folder, is_rank_zero, stored_settings, write_json,
)
from fewlabel.plugins.recipes.validate import (
    COSMETIC_TRAINER_KEYS, DEFAULT_TEACHER, RecipeError, accepted_keys, check_config,
)


def _augment(spec: dict[str, Any] | None) -> nn.Module | None:
    spec = dict(spec or {})
    return create_augment(spec.pop("name", None), **spec)


@rank_zero_only
def _say(message: str) -> None:
    print(f"[fewlabel] {message}", flush=True)


def _settings(config: dict[str, Any], keys: tuple[str, ...], **extra: Any) -> dict[str, Any]:
    """The configuration a stage's result depends on: ``keys`` (+ ``extra``), without cosmetic trainer keys."""
    picked = copy.deepcopy({**{key: config.get(key) for key in keys}, **extra})
    for section in [picked, *(v for v in picked.values() if isinstance(v, dict))]:
        trainer = section.get("trainer")
        if isinstance(trainer, dict):
            section["trainer"] = {k: v for k, v in trainer.items() if k not in COSMETIC_TRAINER_KEYS}
    return picked


TEACHER_KEYS = ("seed", "num_threads", "data", "trainer", "teacher")
STUDENT_KEYS = (*TEACHER_KEYS, "pseudo_labels", "student")


def build_teacher(config: dict[str, Any], dm: FewLabelDataModule) -> Method:
    """Stage 1's module: ``teacher.method`` (default DeepCluster-v2) of the method registry, as configured.

    Methods that keep per-sample state (DeepCluster-v2's memory bank) get ``num_samples``.
    """
    cfg = config["teacher"]
    method = METHODS.get(cfg.get("method", DEFAULT_TEACHER))
    kwargs = dict(cfg.get("module") or {})
    if "num_samples" in accepted_keys(method):
        kwargs["num_samples"] = dm.num_unlabeled
    return method(cfg["encoder"], augment=_augment(cfg.get("augment")), **kwargs)


def teacher_callbacks(config: dict[str, Any], module: Method) -> list[L.Callback]:
    """An :class:`EMATeacher` (``teacher.ema`` settings) for methods with momentum teachers."""
    if not callable(getattr(module, "momentum_pairs", None)):
        return []
    return [EMATeacher(**(config["teacher"].get("ema") or {}))]


def build_student(config: dict[str, Any], dm: FewLabelDataModule,
                  teacher: nn.Module | None) -> tuple[SelfDistillation, PseudoLabeler]:
    """Stage 3's module and the stage-2 callback that labels the pool for it."""
    cfg, pl_cfg = config["student"], dict(config.get("pseudo_labels") or {})
    k = pl_cfg.pop("num_clusters", None) or dm.num_classes
    module = SelfDistillation(cfg["encoder"], num_classes=k, num_samples=dm.num_unlabeled,
                              augment=_augment(cfg.get("augment")), **(cfg.get("module") or {}))
    return module, PseudoLabeler(num_clusters=k, teacher=teacher, dataloader=lambda: dm.unlabeled_dataloader(train=False),
                                 val_dataloader=dm.val_dataloader, **pl_cfg)


def build_classifier(config: dict[str, Any], dm: FewLabelDataModule, spec: dict[str, Any],
                     encoders: dict[str, nn.Module]) -> Classifier:
    """Stage 4's module for one method: a copy of its encoder (or a fresh one) + a linear head."""
    source = spec.get("encoder_from", "scratch")
    encoder = build_encoder(config["student"]["encoder"]) if source == "scratch" else copy.deepcopy(encoders[source])
    return Classifier(encoder, num_classes=dm.num_classes, augment=_augment(spec.get("augment")),
                      **(spec.get("module") or {}))


def finetune_runs(config: dict[str, Any], output: Path) -> Iterator[tuple[str, int, int, dict[str, Any], dict[str, Any], Path]]:
    """Every stage-4 run: ``(method, labels_per_class, seed, spec, settings, result file)``.

    With ``finetune.lr_candidates``, each method runs once per candidate learning rate (its
    ``module.lr`` replaced; results in ``finetune/<method>/lr<lr>/``); :func:`choose_lr` then keeps,
    per method and budget, the candidate with the best mean validation accuracy.
    """
    cfg = config["finetune"]
    base = {key: cfg[key] for key in ("augment", "module", "trainer") if key in cfg}
    methods = cfg.get("methods") or {}
    # everything a run depends on: its own spec and every upstream section (not the other methods)
    upstream = tuple(key for key in config if key not in ("finetune", "pictures"))
    for method in methods:
        for lr in cfg.get("lr_candidates") or [None]:
            spec = merge(base, methods[method] or {})
            folder = output / "finetune" / method
            if lr is not None:
                spec = merge(spec, {"module": {"lr": lr}})
                folder = folder / f"lr{lr:g}"
            settings = _settings(config, upstream, finetune=spec, draws_together=_draws_together(config, spec))
            for k in cfg["labels_per_class"]:
                for seed in cfg["seeds"]:
                    yield method, k, seed, spec, settings, folder / f"lpc{k}_seed{seed}.json"


def _draws_together(config: dict[str, Any], spec: dict[str, Any]) -> bool:
    """Whether a method's draws train as one :class:`ClassifierEnsemble` (``finetune.draws_together``, where
    the ensemble supports the settings: not with LP-FT or gradient clipping by norm)."""
    trainer = {**(config.get("trainer") or {}), **(spec.get("trainer") or {})}
    clips_norm = trainer.get("gradient_clip_val") and trainer.get("gradient_clip_algorithm", "norm") == "norm"
    return bool(config["finetune"].get("draws_together", True) and not (spec.get("module") or {}).get("lp_steps")
                and not clips_norm)


def plan_stages(config: dict[str, Any], output: Path) -> list[tuple[str, Path, dict[str, Any] | None, dict[str, Any]]]:
    """``(name, path, stored settings, settings)`` of every stage and fine-tune run, for the up-front check."""
    stages = [("teacher", output / "teacher", stored_settings(output / "teacher"), _settings(config, TEACHER_KEYS)),
              ("student", output / "student", stored_settings(output / "student"), _settings(config, STUDENT_KEYS))]
    for method, k, seed, _, settings, path in finetune_runs(config, output):
        stored = json.loads(path.read_text()).get("settings") if path.exists() else None
        stages.append((f"finetune {method} {k} labels/class draw {seed}", path, stored, settings))
    return stages


def _checked(where: str, make: Callable[[], Any], hint: str = "") -> Any:
    """Run ``make``; turn any error into a one-line RecipeError naming ``where``."""
    try:
        return make()
    except RecipeError:
        raise
    except Exception as err:  # noqa: BLE001 - every failure here is a configuration problem
        message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise RecipeError(f"{where}: {message}{hint}") from err


def preflight_data(config: dict[str, Any], dm: FewLabelDataModule) -> tuple[dict[str, Any], str]:
    """Every recipe's first pre-flight checks: the label budget and the channels; returns two real samples
    as a batch and the hint an encoder error gets.

    Raises:
        RecipeError: a class too small for the largest budget, or channels that do not match the encoders.
    """
    _checked("finetune.labels_per_class", lambda: dm.check_label_budget(config["finetune"]["labels_per_class"]))
    if config["finetune"].get("lr_candidates") is not None and not len(dm.val_dataloader()):
        raise RecipeError("finetune.lr_candidates needs a labeled validation split to choose on: set "
                          "data.val_fraction > 0")
    batch = {"input": next(iter(dm.unlabeled_dataloader(train=False)))["input"][:2]}
    hint = (f" (one data sample has shape {tuple(batch['input'].shape[1:])}; match the encoder to the data, e.g. "
            f"its in_chans or n_mels)")
    for where in ("teacher", "student"):
        channels, expected = getattr(dm, "channels", None), config[where]["encoder"].get("in_chans")
        if channels is not None and expected is not None and channels != expected:
            raise RecipeError(f"the data have {channels}-channel images (data.channels) but {where}.encoder.in_chans "
                              f"is {expected}: set --{where}.encoder.in_chans {channels} or --data.channels {expected}")
    return batch, hint


@contextmanager
def preflight_trainers(config: dict[str, Any], stages: tuple[str, ...]) -> Iterator[None]:
    """Check that the shared trainer settings and each stage's build here; quiet Lightning's banners inside.

    The stage trainers (with checkpointing) are checked when the block ends without an error.

    Raises:
        RecipeError: naming the section whose trainer cannot be built on this machine.
    """
    lightning_log = logging.getLogger("lightning.pytorch")
    level = lightning_log.level
    lightning_log.setLevel(logging.WARNING)  # the trainers built here are not the run's: no device banners
    here = ", ".join(["cpu", *(["cuda"] if torch.cuda.is_available() else []),
                      *(["mps"] if torch.backends.mps.is_available() else [])])
    try:
        _checked("trainer", lambda: make_trainer(config, {}, logger=False, callbacks=[], progress=False,
                                                 checkpoint=False), f" (accelerators on this machine: {here})")
        yield
        for where in stages:
            _checked(f"{where}.trainer", lambda: make_trainer(config, config[where].get("trainer") or {},
                                                              logger=False, callbacks=[], progress=False,
                                                              checkpoint=True))
    finally:
        lightning_log.setLevel(level)


def preflight_teacher(config: dict[str, Any], dm: FewLabelDataModule, batch: dict[str, Any], hint: str) -> Method:
    """Build the teacher (in eval mode) and push ``batch`` through its encoder and views."""
    teacher = _checked("teacher", lambda: build_teacher(config, dm).eval())
    num_views = getattr(teacher.augment, "num_views", 1)
    views = lambda: make_views(teacher.encoder, batch, teacher.augment, num_views)  # noqa: E731
    _checked("teacher.encoder", lambda: teacher.embed(views()[0]), hint)
    _checked("teacher.ema", lambda: teacher_callbacks(config, teacher))
    return teacher


def preflight_classifier(config: dict[str, Any], dm: FewLabelDataModule, method: str, spec: dict[str, Any],
                         encoders: dict[str, nn.Module], batch: dict[str, Any], hint: str) -> Classifier:
    """Build one fine-tune method's classifier and trainer and push ``batch`` through it."""
    where = f"finetune.methods.{method}"
    clf = _checked(where, lambda: build_classifier(config, dm, spec, encoders).eval())
    _checked(f"{where} encoder", lambda: clf.head(clf.embed(clf.views(batch, 1)[0])), hint)
    _checked(f"{where}.trainer", lambda: make_trainer(config, spec.get("trainer") or {}, logger=False,
                                                      callbacks=[], progress=False, checkpoint=False))
    return clf


def preflight(config: dict[str, Any], dm: FewLabelDataModule) -> None:
    """Build every module and trainer once and push two samples of the real data through each.

    Raises:
        RecipeError: naming the section whose settings do not fit the data or this machine.
    """
    batch, hint = preflight_data(config, dm)
    with preflight_trainers(config, ("teacher", "student")), torch.no_grad():
        teacher = preflight_teacher(config, dm, batch, hint)
        student, _ = _checked("student", lambda: build_student(config, dm, teacher.encoder))
        student.eval()
        _checked("student.encoder", lambda: student.forward_exits(student.views(batch, 1)[0]), hint)
        encoders = {"teacher": teacher.encoder, "student": student.encoder}
        for method, _, _, spec, _, _ in finetune_runs(config, Path()):
            preflight_classifier(config, dm, method, spec, encoders, batch, hint)


def run_teacher(config: dict[str, Any], dm: FewLabelDataModule, output: Path, logger: str, *,
                recipe: str = "unfused", stage: str = "stage 1/4") -> Method:
    """Stage 1: self-supervised pretraining (``teacher.method``) on the unlabeled pool.

    ``recipe`` names the wandb group, ``stage`` the console line's stage (a recipe that reuses this stage).
    """
    L.seed_everything(config.get("seed", 0), workers=True, verbose=False)
    module = build_teacher(config, dm)
    _say(f"{stage} teacher: {type(module).__name__} on the unlabeled pool")

    def trainer(callbacks: list[L.Callback]) -> L.Trainer:
        return make_trainer(config, config["teacher"].get("trainer") or {},
                            callbacks=callbacks, logger=make_logger(logger, output, "teacher", recipe),
                            progress="teacher", checkpoint=True)

    module, _, reused = fit_stage(output / "teacher", module, dm.unlabeled_dataloader, trainer,
                                  teacher_callbacks(config, module), _settings(config, TEACHER_KEYS))
    if reused:
        _say("  reused the finished teacher")
    return module


def run_student(config: dict[str, Any], dm: FewLabelDataModule, teacher: nn.Module, output: Path,
                logger: str) -> tuple[SelfDistillation, dict[str, float]]:
    """Stages 2 + 3: teacher pseudo-labels, then multi-exit self-distillation into a fresh student."""
    L.seed_everything(config.get("seed", 0), workers=True, verbose=False)
    module, labeler = build_student(config, dm, teacher)
    _say(f"stage 2/4 pseudo-labels: teacher embeddings -> PCA-whitening -> k-means (k={module.hparams.num_classes})")
    student_line = "stage 3/4 student: multi-exit self-distillation on the pseudo-labels"

    def trainer(callbacks: list[L.Callback]) -> L.Trainer:
        # the labelling runs as the student's fit starts: stage 3's line follows stage 2's bar
        announce = LambdaCallback(on_train_start=lambda *_: _say(student_line))
        return make_trainer(config, config["student"].get("trainer") or {},
                            callbacks=[*callbacks, announce], logger=make_logger(logger, output, "student", "unfused"),
                            progress="student", checkpoint=True)

    module, info, reused = fit_stage(output / "student", module, dm.unlabeled_dataloader, trainer, [labeler],
                                     _settings(config, STUDENT_KEYS),
                                     describe=lambda: {"pseudo_labels": dict(labeler.metrics),
                                                       "chosen": dict(labeler.chosen)})
    if reused:
        _say(student_line)
        _say("  reused the finished student")
    metrics = info.get("pseudo_labels", {})
    chosen = info.get("chosen", {})
    if chosen:
        scores = ", ".join(f"{d}: {v:.3f}" for d, v in chosen["val_nmi"].items())
        _say(f"  pca_dim chosen on the validation split: {chosen['pca_dim']} (validation NMI {scores}; "
             f"written to {output / 'student' / 'info.json'})")
    if metrics:
        _say("  pseudo-labels vs hidden true labels: " + ", ".join(f"{k}={v:.3f}" for k, v in sorted(metrics.items())))
    return module, metrics


def _finetune_draws(config: dict[str, Any], dm: FewLabelDataModule, method: str, spec: dict[str, Any],
                    encoders: dict[str, nn.Module], k: int, seeds: list[int], output: Path, logger: str,
                    parent: Logger | bool, trained: Callable[[dict[str, Any], Classifier], None] | None = None,
                    ) -> list[dict[str, Any]]:
    """Stage-4 runs of one method and label budget on the draws ``(k, seed)`` of ``dm`` (left unchanged).

    One Trainer fits a :class:`ClassifierEnsemble` of one classifier per draw when
    ``finetune.draws_together`` allows it (each member equals its separate run: bit for bit on the
    CPU, up to float rounding when vectorized on an accelerator);
    otherwise each draw gets its own Trainer. Every classifier is built right after
    ``seed_everything(seed)``, so a scratch encoder and the head are initialised as in a separate run.
    ``trained(row, classifier)`` (if given) sees each trained, evaluated classifier with its result row.
    """
    together = _draws_together(config, spec)
    views = {seed: dm.with_labels(k, seed) for seed in seeds}
    name = f"{method}-lpc{k}" + ("" if together else f"-seed{seeds[0]}")
    prefix = f"{method}/lpc{k}" + ("" if together else f"/seed{seeds[0]}")
    trainer = make_trainer(config, spec.get("trainer") or {}, callbacks=[],
                           logger=make_logger(logger, output, name, "finetune", parent=parent, prefix=prefix),
                           progress=False, checkpoint=False)
    for run_logger in trainer.loggers:  # the draws these runs train on (the module logs its own hyperparameters)
        run_logger.log_hyperparams({"stage": "finetune", "method": method,
                                    "data": {f"seed{seed}": dict(view.hparams) for seed, view in views.items()}})
    start = time.perf_counter()
    if together:
        ensemble = ClassifierEnsemble.build(lambda seed: build_classifier(config, views[seed], spec, encoders), seeds,
                                            names=[f"seed{seed}" for seed in seeds])
        trainer.fit(ensemble, train_dataloaders=[views[seed].labeled_dataloader() for seed in seeds])
        modules = list(ensemble.members)
    else:
        (seed,) = seeds
        L.seed_everything(seed, workers=True, verbose=False)
        modules = [build_classifier(config, views[seed], spec, encoders)]
        trainer.fit(modules[0], train_dataloaders=views[seed].labeled_dataloader())
    rows = []
    for seed, module in zip(seeds, modules):
        val_loader = views[seed].val_dataloader()
        val = trainer.validate(module, val_loader, verbose=False)[0]["val/acc"] if len(val_loader) else float("nan")
        test = trainer.test(module, views[seed].test_dataloader(), verbose=False)[0]["test/acc"]
        rows.append({"method": method, "labels_per_class": k, "seed": seed, "val_accuracy": float(val),
                     "test_accuracy": float(test), "params": sum(p.numel() for p in module.parameters())})
        if trained is not None:
            trained(rows[-1], module)
    seconds = (time.perf_counter() - start) / len(seeds)
    for row in rows:
        row["seconds"] = seconds  # a share of the ensemble's time when the draws train together
    return rows


def run_finetune(config: dict[str, Any], dm: FewLabelDataModule, encoders: dict[str, nn.Module], output: Path,
                 logger: str, trained: Callable[[dict[str, Any], Classifier], None] | None = None, *,
                 recipe: str = "unfused", stage: str = "stage 4/4") -> list[dict[str, Any]]:
    """Stage 4: every method x label budget x label draw; one JSON file per finished run.

    ``trained(row, classifier)`` (if given) sees each classifier trained here (not those of reused runs),
    before its JSON file is written. ``recipe`` names the wandb group, ``stage`` the console line's stage.
    """
    cfg = config["finetune"]
    runs = list(finetune_runs(config, output))
    _say(f"{stage} fine-tune: {len(cfg.get('methods') or {})} methods x {len(cfg['labels_per_class'])} budgets x "
         f"{len(cfg['seeds'])} label draws = {len(runs)} runs")
    results: dict[Path, dict[str, Any]] = {}
    parent = make_logger(logger, output, "finetune", recipe) if logger.startswith("wandb") else False
    lightning_log = logging.getLogger("lightning.pytorch")
    level = lightning_log.level
    lightning_log.setLevel(logging.WARNING)  # 45 short runs: keep the console readable
    groups: dict[tuple[str, int, Path], list[tuple[int, dict[str, Any], dict[str, Any], Path]]] = {}
    candidates = cfg.get("lr_candidates") is not None
    for method, k, seed, spec, settings, path in runs:
        if path.exists():
            row = json.loads(path.read_text())
            check_settings(path, row.get("settings"), settings)
            if candidates:  # the same settings as a run without candidates: its file may come from one
                row["lr"] = float(spec["module"]["lr"])
            results[path] = row
        else:  # the folder tells one learning-rate candidate from another
            groups.setdefault((method, k, path.parent), []).append((seed, spec, settings, path))
    done = len(results)
    for (method, k, _), todo in groups.items():
        spec = todo[0][1]
        batches = [todo] if _draws_together(config, spec) else [[run] for run in todo]
        for batch in batches:
            rows = _finetune_draws(config, dm, method, spec, encoders, k, [seed for seed, *_ in batch], output,
                                   logger, parent, trained)
            for row, (seed, _, settings, path) in zip(rows, batch):
                row["settings"] = settings
                if candidates:
                    row["lr"] = float(spec["module"]["lr"])
                if is_rank_zero():
                    path.parent.mkdir(parents=True, exist_ok=True)
                    write_json(path, row)
                results[path] = row
                done += 1
                lr = f", lr {row['lr']:g}" if candidates else ""
                _say(f"  [{done}/{len(runs)}] {method:<14} {k:>3} labels/class, draw {seed}{lr}: "
                     f"test accuracy {row['test_accuracy']:.4f}")
    lightning_log.setLevel(level)
    ordered = [results[path] for *_, path in runs]
    if isinstance(parent, Logger):
        parent.log_metrics({f"{r['method']}/lpc{r['labels_per_class']}/accuracy_mean": r["accuracy_mean"]
                            for r in summarise(choose_lr(ordered)[0])})
        close_logger(parent)
    return ordered


def draw_embedding_maps(dm: FewLabelDataModule, encoders: dict[str, nn.Module], pseudo_labels: Tensor, output: Path,
                        seed: int = 0) -> list[Path]:
    """``embeddings_<name>.png`` for each encoder: a t-SNE map of the pool's embeddings, coloured by the
    true label (hidden from training) and by the stage-2 pseudo-label (``pseudo_labels``, by pool position)."""
    paths = []
    for name, encoder in encoders.items():
        pool = gather_embeddings(encoder, dm.unlabeled_dataloader(train=False), label_key="target")
        colourings = {"true label": pool.labels, "pseudo-label": pseudo_labels.cpu().numpy()[pool.indices]}
        paths.append(plot_embedding_map(pool.embeddings, colourings, output / f"embeddings_{name}.png", name, seed))
    _say("  embedding maps: " + ", ".join(str(path) for path in paths))
    return paths


def publish_results(config: dict[str, Any], output: Path, logger: str, recipe: str, results: dict[str, Any]) -> None:
    """Every recipe's last step (rank 0 writes): ``results.json``, ``results.csv`` / ``.md``, the
    label-efficiency curve (unless ``pictures: false``), the printed table, the wandb ``results`` run."""
    if is_rank_zero():
        write_json(output / "results.json", results)
        write_tables(output, results["rows"])
        names = ("label_efficiency.png", "embeddings_teacher.png", "embeddings_student.png")
        pictures = []
        if config.get("pictures", True):
            plot_label_efficiency(results["rows"], output / "label_efficiency.png")
            pictures = [output / name for name in names if (output / name).exists()]
        print(format_table(results["rows"]), flush=True)
        log_results(logger, output, recipe, config, results["rows"], pictures)
    _say(f"results written to {output / 'results.json'} ({results['seconds']:.0f} s)")


def choose_lr(runs: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Per method and label budget, keep the runs of the learning rate with the best mean validation accuracy.

    Runs without an ``lr`` (no ``finetune.lr_candidates``) are all kept. Ties go to the candidate
    listed first. Returns the kept runs and, per method and budget, the choice: ``{"method",
    "labels_per_class", "lr", "val_accuracy_mean": {"<lr>": mean over the draws}}``.

    Raises:
        RecipeError: candidates to choose from but no validation accuracy (no labeled validation split).
    """
    if not any("lr" in r for r in runs):
        return runs, []
    groups: dict[tuple[str, int], dict[float, list[dict[str, Any]]]] = {}
    for r in runs:
        groups.setdefault((r["method"], r["labels_per_class"]), {}).setdefault(r["lr"], []).append(r)
    kept, choices = [], []
    for (method, k), by_lr in groups.items():
        val = {lr: float(np.mean([r["val_accuracy"] for r in rows])) for lr, rows in by_lr.items()}
        if any(np.isnan(v) for v in val.values()):
            raise RecipeError("finetune.lr_candidates needs a labeled validation split to choose on "
                              "(data.val_fraction > 0)")
        best = max(val, key=lambda lr: val[lr])  # max keeps the first of equals
        kept += by_lr[best]
        choices.append({"method": method, "labels_per_class": k, "lr": best,
                        "val_accuracy_mean": {f"{lr:g}": v for lr, v in val.items()}})  # JSON keys are strings
    return kept, choices


def summarise(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and sample standard deviation (ddof=1) of test accuracy per method and label budget."""
    rows = []
    keys = sorted({(r["method"], r["labels_per_class"]) for r in runs}, key=lambda mk: (mk[1], mk[0]))
    for method, k in keys:
        acc = np.array([r["test_accuracy"] for r in runs if r["method"] == method and r["labels_per_class"] == k])
        val = np.array([r["val_accuracy"] for r in runs if r["method"] == method and r["labels_per_class"] == k])
        rows.append({"method": method, "labels_per_class": k, "accuracy_mean": float(acc.mean()),
                     "accuracy_std": float(acc.std(ddof=1)) if len(acc) > 1 else 0.0,
                     "val_accuracy_mean": float(val.mean()), "num_draws": int(len(acc)),
                     "params": next(r["params"] for r in runs if r["method"] == method)})
        lrs = {r["lr"] for r in runs if r["method"] == method and r["labels_per_class"] == k and "lr" in r}
        if lrs:
            rows[-1]["lr"] = lrs.pop() if len(lrs) == 1 else sorted(lrs)
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    """A plain-text results table."""
    lines = [f"{'method':<14} {'labels/class':>12} {'test accuracy':>18} {'params':>10}"]
    for r in rows:
        acc = f"{100 * r['accuracy_mean']:.2f} +- {100 * r['accuracy_std']:.2f}"
        lines.append(f"{r['method']:<14} {r['labels_per_class']:>12} {acc:>18} {r['params']:>10,}")
    return "\n".join(lines)


def run_unfused(config: dict[str, Any], output: str | Path, logger: str = "wandb",
                recompute: bool = False) -> dict[str, Any]:
    """Run the whole recipe into ``output`` and return (and write) ``results.json``'s content.

    Before anything trains, the configuration is checked against the constructors it feeds, the run
    folder is locked, the data are loaded, every module and trainer is built once with two real
    samples pushed through it, and the run folder is checked for results made with other settings.
    Only then is ``config.yaml`` written.

    Args:
        config: The merged configuration (:func:`~fewlabel.plugins.recipes.load_config`).
        output: The run folder.
        logger: ``wandb`` (offline unless logged in to wandb), ``wandb-online``, ``csv`` or ``none``.
        recompute: Delete and recompute stages stored with other settings instead of refusing.

    Raises:
        RecipeError: a configuration, data or run-folder problem, found before anything trains.
    """
    output = Path(output)
    check_config(config, DATAMODULES)
    start = time.perf_counter()
    with prepared_run(config, output, preflight, plan_stages, recompute) as dm:
        _say(f"data: {config['data'].get('name', 'digits')}, {dm.num_classes} classes, {dm.num_unlabeled} unlabeled "
             f"training samples")
        teacher = run_teacher(config, dm, output, logger)
        student, pseudo_metrics = run_student(config, dm, teacher.encoder, output, logger)
        if config.get("pictures", True) and is_rank_zero():
            draw_embedding_maps(dm, {"teacher": teacher.encoder, "student": student.encoder}, student.pseudo_labels,
                                output, seed=config.get("seed", 0))
        runs = run_finetune(config, dm, {"teacher": teacher.encoder, "student": student.encoder}, output, logger)
        chosen, lr_choices = choose_lr(runs)
        results = {"recipe": "unfused", "dataset": config["data"].get("name", "digits"), "rows": summarise(chosen),
                   "pseudo_labels": pseudo_metrics,
                   "runs": [{key: value for key, value in r.items() if key != "settings"} for r in runs],
                   "seconds": time.perf_counter() - start}
        if lr_choices:
            results["lr_choices"] = lr_choices
            _say("  learning rates chosen on the validation split: " + ", ".join(
                f"{c['method']} {c['labels_per_class']}: {c['lr']:g}" for c in lr_choices))
        publish_results(config, output, logger, "unfused", results)
        return results


@contextmanager
def prepared_run(config: dict[str, Any], output: Path,
                 check: Callable[[dict[str, Any], FewLabelDataModule], None],
                 plan: Callable[[dict[str, Any], Path], list[tuple[str, Path, dict[str, Any] | None, dict[str, Any]]]],
                 recompute: bool) -> Iterator[FewLabelDataModule]:
    """The start every recipe shares, inside the run folder's lock: torch's threads, the data, the
    pre-flight ``check``, the run folder's stored stages against ``plan`` (see :func:`check_run_folder`),
    then ``config.yaml``. Yields the loaded datamodule.

    Raises:
        RecipeError: a data, pre-flight or run-folder problem, before anything trains.
    """
    with hold_run_folder(output):
        threads = config.get("num_threads")
        if threads is not None:
            torch.set_num_threads(int(threads))
        dm = _checked("data", lambda: _setup(make_datamodule(config["data"])))
        check(config, dm)
        check_run_folder(plan(config, output), recompute)
        if is_rank_zero():
            (output / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        yield dm


def _setup(dm: FewLabelDataModule) -> FewLabelDataModule:
    dm.setup("fit")
    return dm
