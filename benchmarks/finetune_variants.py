"""Fine-tuning variants on the UnFuSeD student: plain fine-tuning vs LP-FT, SSF, SWA and model soups.

The encoder is the UnFuSeD student of a finished recipe run (``--run DIR``: ``DIR/config.yaml`` and
``DIR/student/final.ckpt``); the data, label draws and fine-tuning settings are that run's own
(``finetune.module``/``augment``/``trainer`` merged with ``finetune.methods.unfused``, built by the
recipe's ``finetune_runs``), so the ``plain`` arm repeats the recipe's stage-4 run for the method
``unfused`` step for step (the script prints whether its test accuracies equal those in
``DIR/results.json``). For every label budget (labels per class) and label draw (seed):

* ``plain``: the recipe's fine-tune (Adam, the run's lr and ``encoder_lr_scale``, its epochs, the
  head seeded with the draw seed). The baseline every other row is compared with.
* ``plain:val-best``: the best on the validation split of the 8 plain fine-tunes below (the soup
  ingredients), i.e. what tuning lr / encoder-lr scale / data order on the validation split buys.
* ``uniform-soup`` / ``greedy-soup`` (Model soups, arXiv 2203.05482): 8 plain fine-tunes of the same
  draw from the same student and the same head initialisation, over lr in ``{recipe lr, recipe lr / 3}``
  x encoder-lr scale in ``{recipe scale, 3 x recipe scale}`` x data-order / augmentation seed in
  ``{draw seed, draw seed + 100}`` (the recipe's own run is one of them); the uniform soup averages
  all 8 (BatchNorm running statistics averaged too), the greedy soup adds them best-first while the
  validation accuracy of the average does not drop (the paper's Recipe 1). A soup costs 8 fine-tunes.
* ``swa``: the recipe's fine-tune with Lightning's own ``WeightAveraging`` callback (stochastic weight
  averaging of parameters and buffers over the second half of the optimizer steps), a within-run average.
* ``lp-ft`` (arXiv 2202.10054): ``Classifier(lp_steps=...)``; a linear probe of ``E`` epochs' worth of
  extra optimizer steps (``E`` x steps per epoch of the draw), then the recipe's fine-tune from the probe's
  head (the fine-tuning phase has the recipe's number of steps, whether it counts ``max_epochs`` or
  ``max_steps``).
  ``E`` in ``{25, 100}`` and the encoder-lr scale in ``{recipe scale, 3 x recipe scale}`` are chosen on
  the validation split.
* ``ssf`` (arXiv 2210.08823): ``Classifier(peft="ssf")``: only per-channel scales/shifts after every
  conv and BatchNorm layer + the head train, the BatchNorm statistics frozen, for the recipe's
  epochs; lr in ``{recipe lr, 3 x recipe lr}`` and the SSF-lr scale in ``{1, 10}`` chosen on the
  validation split.

Hyperparameters are chosen per label budget by the mean validation accuracy over the draws (the
validation split, 10 % of the data carved off before the pool, never the test split); ties go to the
earlier grid entry (the recipe's setting first). Test accuracy is reported as mean +- sample std over
the draws, and each row is compared with ``plain`` draw by draw: ``delta`` is the mean paired
difference, ``w/t/l`` the wins/ties/losses, and ``beats plain`` is ``yes`` when the 95 % t-interval of
the paired difference lies above 0, ``worse`` when below, ``n.s.`` otherwise.

Torch runs on ``num_threads`` of the run's config (1 for the digits run; unset: torch's default), as
the recipe did. ``--arms`` runs a subset (``plain`` always; the soups and ``plain:val-best`` share the 8
ingredients, without them only the recipe's own run is trained) and ``--max-settings N`` keeps the first
``N`` settings of the ``lp-ft`` and ``ssf`` grids, for runs whose fine-tunes are slow (spoken digits).

    python benchmarks/finetune_variants.py --run runs/unfused           # 1/5/10 labels x draws 0-4
    python benchmarks/finetune_variants.py --run runs/unfused --quick   # 1 budget, 2 draws, 10 epochs
    python benchmarks/finetune_variants.py --run runs/aud --arms plain lp-ft ssf --max-settings 1
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import yaml
from lightning.pytorch.callbacks import WeightAveraging
from torch import nn

from fewlabel.datamodules import FewLabelDataModule
from fewlabel.plugins.augment import create_augment
from fewlabel.plugins.encoders.base import build_encoder
from fewlabel.plugins.methods import Classifier
from fewlabel.plugins.optim import greedy_soup, uniform_soup
from fewlabel.plugins.recipes.build import make_datamodule, make_trainer
from fewlabel.plugins.recipes.config import default_config
from fewlabel.plugins.recipes.unfused import finetune_runs

T_95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


class SecondHalfSWA(WeightAveraging):
    """Lightning's ``WeightAveraging`` (equal-weight SWA) over the optimizer steps from ``start`` on."""

    def __init__(self, start: int) -> None:
        super().__init__(use_buffers=True)
        self.start = start

    def should_update(self, step_idx: int | None = None, epoch_idx: int | None = None) -> bool:
        return step_idx is not None and step_idx >= self.start


def load_student(run: Path, config: dict[str, Any]) -> nn.Module:
    """The run's student encoder with the weights of ``student/final.ckpt``."""
    encoder = build_encoder(config["student"]["encoder"])
    state = torch.load(run / "student" / "final.ckpt", map_location="cpu", weights_only=False)["state_dict"]
    encoder.load_state_dict({k[len("encoder."):]: v for k, v in state.items() if k.startswith("encoder.")})
    return encoder


def _tensors(loader: Any) -> tuple[torch.Tensor, torch.Tensor]:
    batches = list(loader)
    return torch.cat([b["input"] for b in batches]), torch.cat([b["label"] for b in batches])


@torch.no_grad()
def accuracy(module: nn.Module, data: tuple[torch.Tensor, torch.Tensor]) -> float:
    module.eval()
    x, y = data
    logits = torch.cat([module(x[i : i + 1024]) for i in range(0, len(x), 1024)])
    return float((logits.argmax(1) == y).float().mean())


class Bench:
    """Fine-tunes one student on one run's data with that run's stage-4 settings."""

    def __init__(self, run: Path, quick: bool) -> None:
        stored = run / "config.yaml"
        if not stored.exists() and not quick:
            raise SystemExit(f"{stored} not found: --run must be a finished UnFuSeD run folder (fewlabel run unfused)")
        self.config = yaml.safe_load(stored.read_text()) if stored.exists() else default_config("unfused")
        if self.config.get("num_threads"):
            torch.set_num_threads(int(self.config["num_threads"]))
        self.spec = next(spec for method, _, _, spec, _, _ in finetune_runs(self.config, run) if method == "unfused")
        if quick:
            self.spec = {**self.spec, "trainer": {**(self.spec.get("trainer") or {}), "max_epochs": 10}}
        self.dm: FewLabelDataModule = make_datamodule(self.config["data"])
        self.dm.setup("fit")
        student_ckpt = run / "student" / "final.ckpt"
        if student_ckpt.exists():
            self.student = load_student(run, self.config)
        else:  # --quick without a finished run: a smoke test of the script only
            print(f"note: {student_ckpt} not found: a randomly initialised student (smoke test, not a result)")
            L.seed_everything(0, verbose=False)
            self.student = build_encoder(self.config["student"]["encoder"])
        self.val = _tensors(self.dm.val_dataloader())
        self.test = _tensors(self.dm.test_dataloader())

    def steps_per_epoch(self, data: FewLabelDataModule) -> int:
        return len(data.labeled_dataloader())

    def fit_steps(self, data: FewLabelDataModule) -> int:
        """Optimizer steps of the recipe's fine-tune on ``data``, as Lightning counts them: ``max_steps``
        and ``max_epochs`` x steps per epoch, whichever ends the fit first (an unset ``max_epochs`` is
        Lightning's default: unbounded with ``max_steps``, else 1000)."""
        trainer = self.spec.get("trainer") or {}
        max_steps = int(trainer.get("max_steps", -1))
        max_epochs = trainer.get("max_epochs")
        max_epochs = int(max_epochs) if max_epochs is not None else (-1 if max_steps > 0 else 1000)
        by_epochs = max_epochs * self.steps_per_epoch(data) if max_epochs >= 0 else None
        if max_steps > 0:
            return max_steps if by_epochs is None else min(max_steps, by_epochs)
        if by_epochs is None:
            raise SystemExit("the run's finetune.trainer sets neither max_steps nor max_epochs >= 0: no fixed length")
        return by_epochs

    def finetune(self, k: int, draw: int, *, train_seed: int | None = None, extra_steps: int = 0,
                 callbacks: Callable[[FewLabelDataModule], list[L.Callback]] | None = None,
                 **module: Any) -> Classifier:
        """The recipe's ``_finetune_one`` for the method ``unfused``, with ``module`` overrides.

        ``extra_steps`` (LP-FT's probe) lengthens the fit by that many optimizer steps on top of the
        recipe's :meth:`fit_steps`, whether the recipe counts epochs or steps.
        """
        data = self.dm.with_labels(k, draw)
        L.seed_everything(draw, workers=True, verbose=False)  # as the recipe: before the head is initialised
        spec_module = {**(self.spec.get("module") or {}), **module}
        augment = dict(self.spec.get("augment") or {})
        clf = Classifier(copy.deepcopy(self.student), num_classes=data.num_classes,
                         augment=create_augment(augment.pop("name", None), **augment), **spec_module)
        if train_seed is not None and train_seed != draw:
            L.seed_everything(train_seed, workers=True, verbose=False)  # another data order / augmentation draw
        stage_trainer = dict(self.spec.get("trainer") or {})
        if extra_steps:
            stage_trainer.update(max_epochs=-1, max_steps=self.fit_steps(data) + extra_steps)
        trainer = make_trainer(self.config, stage_trainer, logger=False, progress=False, checkpoint=False,
                               callbacks=callbacks(data) if callbacks else [])
        trainer.fit(clf, train_dataloaders=data.labeled_dataloader())
        return clf

    def scores(self, module: nn.Module) -> tuple[float, float]:
        return accuracy(module, self.val), accuracy(module, self.test)


ARMS = ["plain", "plain:val-best", "uniform-soup", "greedy-soup", "swa", "lp-ft", "ssf"]
INGREDIENT_ARMS = ("plain:val-best", "uniform-soup", "greedy-soup")  # need every soup ingredient
CHOSEN_ARMS = ("lp-ft", "ssf")  # choose their setting on the validation split


def grids(base_lr: float, base_scale: float, quick: bool,
          max_settings: int | None = None) -> dict[str, list[dict[str, Any]]]:
    """The settings each arm chooses from on the validation split (the recipe's first).

    ``max_settings`` keeps only the first that many settings of the ``lp-ft`` and ``ssf`` grids (the
    soup ingredients are not cut: a soup of fewer is another method).
    """
    base_lr, base_scale = float(base_lr), float(base_scale)
    low_lr, high_lr, high_scale = round(base_lr / 3, 8), round(3 * base_lr, 8), round(3 * base_scale, 8)
    if quick:
        grid = {"ingredients": [{"lr": base_lr, "encoder_lr_scale": base_scale, "train_seed": 0},
                                {"lr": low_lr, "encoder_lr_scale": high_scale, "train_seed": 100}],
                "lp-ft": [{"lp_epochs": 5, "encoder_lr_scale": base_scale}],
                "ssf": [{"lr": base_lr, "encoder_lr_scale": 1.0}]}
    else:
        grid = {
            "ingredients": [{"lr": lr, "encoder_lr_scale": scale, "train_seed": seed}
                            for seed in (0, 100) for lr in (base_lr, low_lr) for scale in (base_scale, high_scale)],
            "lp-ft": [{"lp_epochs": e, "encoder_lr_scale": s} for e in (25, 100) for s in (base_scale, high_scale)],
            "ssf": [{"lr": lr, "encoder_lr_scale": s} for lr in (base_lr, high_lr) for s in (1.0, 10.0)],
        }
    if max_settings is not None:
        grid.update({arm: grid[arm][:max_settings] for arm in CHOSEN_ARMS})
    return grid


def _append(out: dict[str, dict[str, Any]], arm: str, val: float, test: float, **extra: Any) -> None:
    row = out.setdefault(arm, {"val": [], "test": [], **{key: [] for key in extra}})
    row["val"].append(val)
    row["test"].append(test)
    for key, value in extra.items():
        row[key].append(value)


def run_budget(bench: Bench, k: int, draws: list[int], grid: dict[str, list[dict[str, Any]]],
               arms: list[str] = ARMS) -> dict[str, Any]:
    """The ``arms`` (``plain`` always) at one label budget: ``{arm: {"val": [...], "test": [...], "setting": ...}}``
    (one entry per draw)."""
    out: dict[str, dict[str, Any]] = {}
    per_setting: dict[str, list[list[tuple[float, float]]]] = {arm: [] for arm in CHOSEN_ARMS if arm in arms}
    # soup ingredients, the first being the recipe's own run (train_seed 0 = the draw seed) = plain
    ingredients = grid["ingredients"] if any(arm in arms for arm in INGREDIENT_ARMS) else grid["ingredients"][:1]
    for draw in draws:
        data = bench.dm.with_labels(k, draw)
        models, ingredient_scores = [], []
        for setting in ingredients:
            clf = bench.finetune(k, draw, train_seed=draw + setting["train_seed"], lr=setting["lr"],
                                 encoder_lr_scale=setting["encoder_lr_scale"])
            models.append(clf)
            ingredient_scores.append(bench.scores(clf))
        _append(out, "plain", *ingredient_scores[0])
        line = [f"plain {ingredient_scores[0][1]:.4f}"]
        if "plain:val-best" in arms:
            best = max(range(len(models)), key=lambda i: (ingredient_scores[i][0], -i))
            _append(out, "plain:val-best", *ingredient_scores[best], chosen=best)
        if "uniform-soup" in arms or "greedy-soup" in arms:
            template = copy.deepcopy(models[0])

            def evaluate(state: dict[str, torch.Tensor], split: tuple[torch.Tensor, torch.Tensor] = bench.val) -> float:
                template.load_state_dict(state)
                return accuracy(template, split)

            states = [m.state_dict() for m in models]
            if "uniform-soup" in arms:
                uniform = uniform_soup(states)
                _append(out, "uniform-soup", evaluate(uniform), evaluate(uniform, bench.test))
            if "greedy-soup" in arms:
                greedy = greedy_soup(states, evaluate, scores=[s[0] for s in ingredient_scores])
                _append(out, "greedy-soup", greedy.score, evaluate(greedy.state_dict, bench.test),
                        ingredients=greedy.ingredients)
                line.append(f"greedy soup {out['greedy-soup']['test'][-1]:.4f} ({len(greedy.ingredients)} ingredients)")
        if "swa" in arms:  # averages over the second half of the recipe's optimizer steps
            swa = bench.finetune(k, draw, callbacks=lambda d: [SecondHalfSWA(start=bench.fit_steps(d) // 2)])
            _append(out, "swa", *bench.scores(swa))
            line.append(f"swa {out['swa']['test'][-1]:.4f}")
        spe = bench.steps_per_epoch(data)
        for arm in per_setting:
            row = []
            for setting in grid[arm]:
                if arm == "lp-ft":
                    lp_steps = setting["lp_epochs"] * spe
                    clf = bench.finetune(k, draw, extra_steps=lp_steps, lp_steps=lp_steps,
                                         encoder_lr_scale=setting["encoder_lr_scale"])
                else:
                    clf = bench.finetune(k, draw, peft="ssf", lr=setting["lr"],
                                         encoder_lr_scale=setting["encoder_lr_scale"])
                row.append(bench.scores(clf))
            per_setting[arm].append(row)
            line.append(f"{arm} " + "/".join(f"{test:.4f}" for _, test in row))
        print(f"  {k} labels/class, draw {draw}: " + ", ".join(line), flush=True)
    for arm, rows in per_setting.items():  # choose the setting on the mean validation accuracy over draws
        settings = grid[arm]
        means = [float(np.mean([rows[d][s][0] for d in range(len(draws))])) for s in range(len(settings))]
        chosen = max(range(len(settings)), key=lambda s: (means[s], -s))
        out[arm] = {"val": [rows[d][chosen][0] for d in range(len(draws))],
                    "test": [rows[d][chosen][1] for d in range(len(draws))],
                    "setting": settings[chosen],
                    "grid": [{"setting": settings[s], "val_mean": means[s],
                              "test_mean": float(np.mean([rows[d][s][1] for d in range(len(draws))]))}
                             for s in range(len(settings))]}
    return out


def compare(test: list[float], plain: list[float]) -> dict[str, Any]:
    diff = np.array(test) - np.array(plain)
    n = len(diff)
    sd = float(diff.std(ddof=1)) if n > 1 else 0.0
    half = T_95.get(n - 1, 1.96) * sd / math.sqrt(n) if n > 1 else float("inf")
    mean = float(diff.mean())
    verdict = "yes" if mean - half > 0 else "worse" if mean + half < 0 else "n.s."
    return {"delta": mean, "ci95": half, "wins": int((diff > 1e-9).sum()), "ties": int((abs(diff) <= 1e-9).sum()),
            "losses": int((diff < -1e-9).sum()), "beats_plain": verdict}


def format_table(results: dict[int, dict[str, Any]]) -> str:
    lines = [f"{'labels/class':>12} {'arm':<15} {'test acc (%)':>15} {'val acc (%)':>12} {'delta (pts)':>14} "
             f"{'w/t/l':>7} {'beats plain':>11}  setting"]
    for k, arms in results.items():
        for arm in (arm for arm in ARMS if arm in arms):
            r = arms[arm]
            test, val = 100 * np.array(r["test"]), 100 * np.array(r["val"])
            std = test.std(ddof=1) if len(test) > 1 else 0.0
            c = r.get("vs_plain")
            delta = "" if arm == "plain" else f"{100 * c['delta']:+.2f} +- {100 * c['ci95']:.2f}"
            wtl = "" if arm == "plain" else f"{c['wins']}/{c['ties']}/{c['losses']}"
            verdict = "" if arm == "plain" else c["beats_plain"]
            setting = json.dumps(r["setting"]) if "setting" in r else ""
            lines.append(f"{k:>12} {arm:<15} {test.mean():>7.2f} +- {std:<5.2f} {val.mean():>12.2f} {delta:>14} "
                         f"{wtl:>7} {verdict:>11}  {setting}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=Path("runs/unfused"), help="a finished UnFuSeD run folder")
    parser.add_argument("--labels-per-class", type=int, nargs="+", default=None, help="default: the run's budgets")
    parser.add_argument("--draws", type=int, nargs="+", default=None, help="label draws (seeds); default: the run's")
    parser.add_argument("--quick", action="store_true", help="1 label/class, 2 draws, 10 epochs, small grids")
    parser.add_argument("--arms", nargs="+", choices=ARMS, default=ARMS,
                        help="the arms to run (plain, the baseline, always runs); default: all")
    parser.add_argument("--max-settings", type=int, default=None,
                        help="keep the first N settings of the lp-ft and ssf grids (the recipe's first); default: all")
    parser.add_argument("--output", type=Path, default=None, help="write the results as JSON here (after each budget)")
    args = parser.parse_args()
    if args.max_settings is not None and args.max_settings < 1:
        parser.error(f"--max-settings must be an int >= 1, got {args.max_settings}")
    arms = [arm for arm in ARMS if arm == "plain" or arm in args.arms]
    warnings.filterwarnings("ignore")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    start = time.perf_counter()
    bench = Bench(args.run, args.quick)
    cfg = bench.config["finetune"]
    budgets = args.labels_per_class or ([1] if args.quick else list(cfg["labels_per_class"]))
    draws = args.draws or ([0, 1] if args.quick else list(cfg["seeds"]))
    module = bench.spec.get("module") or {}
    grid = grids(float(module.get("lr", 1e-3)), float(module.get("encoder_lr_scale", 1.0)), args.quick,
                 args.max_settings)
    print(f"student: {args.run / 'student' / 'final.ckpt'}; fine-tune settings: {json.dumps(bench.spec)}")
    print(f"budgets {budgets}, draws {draws}; validation {len(bench.val[1])} samples, test {len(bench.test[1])}")
    print(f"arms {arms}; grids {json.dumps({arm: grid[arm] for arm in CHOSEN_ARMS if arm in arms})}", flush=True)
    results: dict[int, dict[str, Any]] = {}
    for k in budgets:
        results[k] = run_budget(bench, k, draws, grid, arms)
        for arm in arms:
            results[k][arm]["vs_plain"] = compare(results[k][arm]["test"], results[k]["plain"]["test"])
        if args.output:
            args.output.write_text(json.dumps({"results": results, "arms": arms, "grid": grid}, indent=2))
    stored = args.run / "results.json"
    if stored.exists() and not args.quick:
        recipe = {(r["labels_per_class"], r["seed"]): r["test_accuracy"]
                  for r in json.loads(stored.read_text())["runs"] if r["method"] == "unfused"}
        differ = [(k, d, results[k]["plain"]["test"][i], recipe.get((k, d)))
                  for k in budgets for i, d in enumerate(draws)
                  if abs(recipe.get((k, d), -1.0) - results[k]["plain"]["test"][i]) >= 1e-6]
        print(f"plain arm equals the recipe's results.json test accuracies: {not differ}")
        for k, d, ours, theirs in differ:
            print(f"  {k} labels/class, draw {d}: plain {ours:.4f}, results.json {theirs}")
    print(format_table(results))
    wall = time.perf_counter() - start
    print(f"wall_time_s: {wall:.0f}")
    if args.output:
        args.output.write_text(json.dumps({"results": results, "arms": arms, "grid": grid, "wall_time_s": wall},
                                          indent=2))


if __name__ == "__main__":
    main()
