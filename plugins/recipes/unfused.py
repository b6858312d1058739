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
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import yaml
from lightning.pytorch.loggers import Logger
from lightning.pytorch.utilities import rank_zero_only
from torch import nn

from fewlabel.callbacks import PseudoLabeler
from fewlabel.datamodules import FewLabelDataModule
from fewlabel.plugins.augment import create_augment
from fewlabel.plugins.modules import Classifier, DeepClusterV2, SelfDistillation
from fewlabel.plugins.modules.common import build_encoder
from fewlabel.plugins.recipes.build import close_logger, make_datamodule, make_logger, make_trainer
from fewlabel.plugins.recipes.config import merge
from fewlabel.plugins.recipes.stage import check_settings, fit_stage, is_rank_zero, write_json

ENCODER_SOURCES = ("teacher", "student", "scratch")


def _augment(spec: dict[str, Any] | None) -> nn.Module | None:
    spec = dict(spec or {})
    return create_augment(spec.pop("name", None), **spec)


@rank_zero_only
def _say(message: str) -> None:
    print(f"[fewlabel] {message}", flush=True)



def run_teacher(config: dict[str, Any], dm: FewLabelDataModule, output: Path, logger: str) -> DeepClusterV2:
    """Stage 1: DeepCluster-v2 on the unlabeled pool."""
    cfg = config["teacher"]
    L.seed_everything(config.get("seed", 0), workers=True, verbose=False)
    module = DeepClusterV2(cfg["encoder"], num_samples=dm.num_unlabeled, augment=_augment(cfg.get("augment")),
                           **cfg.get("module", {}))
    dm.train_split = "unlabeled"
    _say("stage 1/4 teacher: DeepCluster-v2 on the unlabeled pool")

    def trainer(callbacks: list[L.Callback]) -> L.Trainer:
        return make_trainer(config, {"limit_val_batches": 0, **cfg.get("trainer", {})}, callbacks=callbacks,
                            logger=make_logger(logger, output, "teacher", "unfused"), progress=True,
                            checkpoint=True)

    settings = {key: config.get(key) for key in ("seed", "num_threads", "data", "trainer", "teacher")}
    module, _, reused = fit_stage(output / "teacher", module, dm, trainer, [], settings)
    if reused:
        _say("  reused the finished teacher")
    return module


def run_student(config: dict[str, Any], dm: FewLabelDataModule, teacher: nn.Module, output: Path,
                logger: str) -> tuple[SelfDistillation, dict[str, float]]:
    """Stages 2 + 3: teacher pseudo-labels, then multi-exit self-distillation into a fresh student."""
    cfg, pl_cfg = config["student"], dict(config.get("pseudo_labels") or {})
    k = pl_cfg.pop("num_clusters", None) or dm.num_classes
    L.seed_everything(config.get("seed", 0), workers=True, verbose=False)
    module = SelfDistillation(cfg["encoder"], num_classes=k, num_samples=dm.num_unlabeled,
                              augment=_augment(cfg.get("augment")), **cfg.get("module", {}))
    labeler = PseudoLabeler(num_clusters=k, teacher=teacher, **pl_cfg)
    dm.train_split = "unlabeled"
    _say(f"stage 2/4 pseudo-labels: teacher embeddings -> PCA-whitening -> k-means (k={k})")
    _say("stage 3/4 student: multi-exit self-distillation on the pseudo-labels")

    def trainer(callbacks: list[L.Callback]) -> L.Trainer:
        return make_trainer(config, {"limit_val_batches": 0, **cfg.get("trainer", {})}, callbacks=callbacks,
                            logger=make_logger(logger, output, "student", "unfused"), progress=True,
                            checkpoint=True)

    settings = {key: config.get(key) for key in ("seed", "num_threads", "data", "trainer", "teacher",
                                                  "pseudo_labels", "student")}
    module, info, reused = fit_stage(output / "student", module, dm, trainer, [labeler], settings,
                                     describe=lambda: {"pseudo_labels": dict(labeler.metrics)})
    if reused:
        _say("  reused the finished student")
    metrics = info.get("pseudo_labels", {})
    if metrics:
        _say("  pseudo-labels vs hidden true labels: " + ", ".join(f"{k}={v:.3f}" for k, v in sorted(metrics.items())))
    return module, metrics


def _finetune_one(config: dict[str, Any], dm: FewLabelDataModule, method: str, spec: dict[str, Any],
                  encoder: nn.Module, k: int, seed: int, output: Path, logger: str,
                  parent: Logger | bool) -> dict[str, Any]:
    dm.draw_labels(k, seed)
    dm.train_split = "labeled"
    module = Classifier(encoder, num_classes=dm.num_classes, augment=_augment(spec.get("augment")),
                        **spec.get("module", {}))
    trainer = make_trainer(config, {"check_val_every_n_epoch": 10**6, **spec.get("trainer", {})}, callbacks=[],
                           logger=make_logger(logger, output, f"{method}-lpc{k}-seed{seed}", "finetune",
                                              parent=parent, prefix=f"{method}/lpc{k}/seed{seed}"),
                           progress=False, checkpoint=False)
    start = time.perf_counter()
    trainer.fit(module, datamodule=dm)
    val = trainer.validate(module, datamodule=dm, verbose=False)[0].get("val/acc", float("nan"))
    test = trainer.test(module, datamodule=dm, verbose=False)[0]["test/acc"]
    return {"method": method, "labels_per_class": k, "seed": seed, "val_accuracy": float(val),
            "test_accuracy": float(test), "params": sum(p.numel() for p in module.parameters()),
            "seconds": time.perf_counter() - start}


def run_finetune(config: dict[str, Any], dm: FewLabelDataModule, encoders: dict[str, nn.Module], output: Path,
                 logger: str) -> list[dict[str, Any]]:
    """Stage 4: every method x label budget x label draw; one JSON file per finished run."""
    cfg = config["finetune"]
    base = {key: cfg[key] for key in ("augment", "module", "trainer") if key in cfg}
    methods = cfg.get("methods") or {}
    runs = [(m, k, s) for m in methods for k in cfg["labels_per_class"] for s in cfg["seeds"]]
    _say(f"stage 4/4 fine-tune: {len(methods)} methods x {len(cfg['labels_per_class'])} budgets x "
         f"{len(cfg['seeds'])} label draws = {len(runs)} runs")
    results: list[dict[str, Any]] = []
    parent = make_logger(logger, output, "finetune", "unfused") if logger.startswith("wandb") else False
    lightning_log = logging.getLogger("lightning.pytorch")
    level = lightning_log.level
    lightning_log.setLevel(logging.WARNING)  # 45 short runs: keep the console readable
    for i, (method, k, seed) in enumerate(runs, 1):
        path = output / "finetune" / method / f"lpc{k}_seed{seed}.json"
        spec = merge(base, methods[method] or {})
        # everything the run depends on: its own spec and every upstream section (not the other methods)
        settings = {**{key: value for key, value in config.items() if key != "finetune"}, "finetune": spec}
        if path.exists():
            row = json.loads(path.read_text())
            check_settings(path, row.get("settings"), settings)
            results.append(row)
            continue
        source = spec.get("encoder_from", "scratch")
        if source not in ENCODER_SOURCES:
            raise ValueError(f"finetune.methods.{method}.encoder_from must be one of {ENCODER_SOURCES}, got {source!r}")
        L.seed_everything(seed, workers=True, verbose=False)  # before a scratch encoder is initialised
        encoder = build_encoder(config["student"]["encoder"]) if source == "scratch" else copy.deepcopy(encoders[source])
        row = _finetune_one(config, dm, method, spec, encoder, k, seed, output, logger, parent)
        row["settings"] = settings
        if is_rank_zero():
            path.parent.mkdir(parents=True, exist_ok=True)
            write_json(path, row)
        results.append(row)
        _say(f"  [{i}/{len(runs)}] {method:<14} {k:>3} labels/class, draw {seed}: "
             f"test accuracy {row['test_accuracy']:.4f}")
    lightning_log.setLevel(level)
    if isinstance(parent, Logger):
        parent.log_metrics({f"{r['method']}/lpc{r['labels_per_class']}/accuracy_mean": r["accuracy_mean"]
                            for r in summarise(results)})
        close_logger(parent)
    return results


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
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    """A plain-text results table."""
    lines = [f"{'method':<14} {'labels/class':>12} {'test accuracy':>18} {'params':>10}"]
    for r in rows:
        acc = f"{100 * r['accuracy_mean']:.2f} +- {100 * r['accuracy_std']:.2f}"
        lines.append(f"{r['method']:<14} {r['labels_per_class']:>12} {acc:>18} {r['params']:>10,}")
    return "\n".join(lines)


def run_unfused(config: dict[str, Any], output: str | Path, logger: str = "wandb") -> dict[str, Any]:
    """Run the whole recipe into ``output`` and return (and write) ``results.json``'s content."""
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    threads = config.get("num_threads")
    if threads is not None:
        torch.set_num_threads(int(threads))
    (output / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    start = time.perf_counter()
    dm = make_datamodule(config["data"])
    dm.setup("fit")
    _say(f"data: {config['data'].get('name', 'digits')}, {dm.num_classes} classes, {dm.num_unlabeled} unlabeled "
         f"training samples")
    teacher = run_teacher(config, dm, output, logger)
    student, pseudo_metrics = run_student(config, dm, teacher.encoder, output, logger)
    runs = run_finetune(config, dm, {"teacher": teacher.encoder, "student": student.encoder}, output, logger)
    results = {"recipe": "unfused", "dataset": config["data"].get("name", "digits"), "rows": summarise(runs),
               "pseudo_labels": pseudo_metrics,
               "runs": [{key: value for key, value in r.items() if key != "settings"} for r in runs], "seconds": time.perf_counter() - start}
    if is_rank_zero():
        write_json(output / "results.json", results)
        print(format_table(results["rows"]), flush=True)
    _say(f"results written to {output / 'results.json'} ({results['seconds']:.0f} s)")
    return results
