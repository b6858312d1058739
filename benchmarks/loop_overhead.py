"""Training-loop overhead: SimCLR steps through ``lightning.Trainer`` vs a hand-written PyTorch loop.

Both arms run the same computation on the digits unlabeled pool (``DigitsDataModule``, batch 64,
shuffled, last partial batch dropped: 17 steps per epoch, the loader restarting each epoch):
:class:`~fewlabel.plugins.methods.SimCLR` with ``small_cnn`` width 32 (``--width``; the width of the
recipe's digits teacher, the smallest model the recipe pretrains), the view
augmentation of ``ssl_zoo_digits.py``, its default SGD (lr 0.05, momentum 0.9, weight decay 1e-6)
and its warm-up + cosine schedule stepped every optimizer step, for ``--steps`` steps.

* lightning: ``trainer.fit(module, loader)`` with ``max_steps``, no logger, no checkpointing, no
  progress bar, no model summary (the module's ``training_step`` logs ``train/loss`` as it always does,
  through ``Method.log_train``: a window mean handed to ``self.log`` on the logger's steps);
* torch: the pieces of ``SimCLR.training_step`` called by hand (``views`` -> ``embed`` of both views
  as one batch -> ``projector`` -> ``NTXentLoss``), then ``zero_grad`` / ``backward`` / ``step`` of
  the same optimizer and a ``LambdaLR`` on the same schedule;
* lightning_nolog: the lightning arm with a subclass whose ``self.log`` does nothing, to show how
  much of the difference is Lightning's logging machinery (``log_cost_ms_per_step``).

Each arm starts from the same seed before building the module and again before its first batch, so
both draw the same initial weights, batches and augmentations; ``max_param_diff`` (the largest
absolute difference between the two arms' trained weights) checks that they did the same work.

Figures: ``fit`` is the wall time of the whole call (``trainer.fit`` incl. its setup, or the loop incl.
building the optimizer); ``steady`` is the time from the start of step ``--warm`` to the end, i.e.
per-step cost without the fixed start-up. Each is the best of ``--repeats`` runs per arm, the arms
interleaved so that a busy moment on the machine does not favour one side; one untimed warm-up run
of the lightning and torch arms comes first. The ratios are lightning / torch throughput (target >= 0.95).

Torch runs on one thread (``torch.set_num_threads(1)``): the machine these figures come from has 2
shared cores.

    python benchmarks/loop_overhead.py                 # 200 steps, best of 3, width 32
    python benchmarks/loop_overhead.py --width 16      # a quarter of the convolution work per step
    python benchmarks/loop_overhead.py --quick         # a few steps, seconds
"""

from __future__ import annotations

import argparse
import logging
import time
import warnings
from typing import Any

import lightning as L
import torch

from fewlabel.datamodules import DigitsDataModule
from fewlabel.plugins.augment.image import BatchImageAugment
from fewlabel.plugins.methods import SimCLR
from fewlabel.plugins.optim.optimizers import OPTIMIZERS
from fewlabel.plugins.optim.schedules import cosine_schedule

WIDTH = 32
BATCH_SIZE = 64


class _SimCLRWithoutLog(SimCLR):
    """SimCLR whose ``self.log`` does nothing: isolates the cost of Lightning's logging machinery."""

    def log(self, *args: Any, **kwargs: Any) -> None:
        return None


def make_module(seed: int, width: int, log: bool = True) -> SimCLR:
    torch.manual_seed(seed)
    augment = BatchImageAugment(scale=(0.8, 1.2), rotation=15.0, translate=0.12, noise=0.05)
    return (SimCLR if log else _SimCLRWithoutLog)({"name": "small_cnn", "width": width}, augment=augment)


class _StartClock(L.Callback):
    """Records the time at the start of batch ``warm`` (for the steady-state figure) and the last step's loss."""

    def __init__(self, warm: int) -> None:
        self.warm, self.start = warm, float("nan")
        self.last_loss = torch.tensor(float("nan"))

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        if trainer.global_step == self.warm:
            self.start = time.perf_counter()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self.last_loss = outputs["loss"].detach()  # no host sync here; read once after fit


def run_lightning(loader: Any, steps: int, warm: int, seed: int, width: int, log: bool = True
                  ) -> tuple[float, float, SimCLR, float]:
    """``(fit seconds, steady seconds, trained module, last loss)`` of ``trainer.fit``."""
    module = make_module(seed, width, log)
    clock = _StartClock(warm)
    trainer = L.Trainer(max_steps=steps, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[clock])
    torch.manual_seed(seed + 1)
    start = time.perf_counter()
    trainer.fit(module, train_dataloaders=loader)
    end = time.perf_counter()
    return end - start, end - clock.start, module, float(clock.last_loss)


def run_torch(loader: Any, steps: int, warm: int, seed: int, width: int) -> tuple[float, float, SimCLR, float]:
    """``(loop seconds, steady seconds, trained module, last loss)`` of the hand-written loop."""
    module = make_module(seed, width)
    settings = module.optimizer_settings
    torch.manual_seed(seed + 1)
    start = time.perf_counter()
    module.train()
    params = [p for p in module.parameters() if p.requires_grad]
    opt = OPTIMIZERS.create(settings["name"], params=params, lr=settings["lr"], weight_decay=settings["weight_decay"],
                            momentum=settings["momentum"])
    warmup = int(settings["warmup_fraction"] * steps)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: cosine_schedule(s, steps, 1.0, 0.0, warmup_steps=warmup))
    step, steady_start, loss = 0, float("nan"), torch.tensor(float("nan"))
    while step < steps:
        for batch in loader:
            if step == warm:
                steady_start = time.perf_counter()
            first, second = module.views(batch, 2)
            z0, z1 = module.projector(module.embed(torch.cat([first, second]))).chunk(2)
            loss = module.criterion(z0, z1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            if step == steps:
                break
    end = time.perf_counter()
    return end - start, end - steady_start, module, float(loss.detach())


def max_param_diff(a: torch.nn.Module, b: torch.nn.Module) -> float:
    return max(float((p - q).abs().max()) for p, q in zip(a.state_dict().values(), b.state_dict().values())
               if p.is_floating_point())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warm", type=int, default=20, help="steps before the steady-state clock starts")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--width", type=int, default=WIDTH, help="small_cnn width (more compute per step)")
    parser.add_argument("--quick", action="store_true", help="10 steps, one repeat")
    args = parser.parse_args()
    if args.quick:
        args.steps, args.repeats, args.warm = 10, 1, 2
    if not 0 <= args.warm < args.steps:
        raise SystemExit(f"--warm must be in [0, --steps), got {args.warm}")
    torch.set_num_threads(1)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    logging.getLogger("lightning.fabric").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*smaller than the logging interval.*")

    dm = DigitsDataModule(batch_size=BATCH_SIZE)
    dm.setup("fit")
    loader = dm.unlabeled_dataloader(train=True)
    print(f"loop_overhead: SimCLR, small_cnn width {args.width}, digits pool {dm.num_unlabeled}, batch {BATCH_SIZE} "
          f"({len(loader)} steps/epoch), {args.steps} steps, best of {args.repeats} interleaved, "
          f"steady from step {args.warm}, torch threads {torch.get_num_threads()}")

    warm_steps = min(args.steps, 10)
    run_lightning(loader, warm_steps, 0, args.seed, args.width)  # untimed: imports, allocator, oneDNN kernels
    run_torch(loader, warm_steps, 0, args.seed, args.width)
    arms = {"lightning": run_lightning, "torch": run_torch,
            "lightning_nolog": lambda *a: run_lightning(*a, log=False)}
    best = {name: [float("inf"), float("inf")] for name in arms}
    trained: dict[str, tuple[SimCLR, float]] = {}
    for _ in range(args.repeats):
        for name, fn in arms.items():
            fit_s, steady_s, module, loss = fn(loader, args.steps, args.warm, args.seed, args.width)
            best[name] = [min(best[name][0], fit_s), min(best[name][1], steady_s)]
            trained[name] = (module, loss)

    steady_steps = args.steps - args.warm
    print(f"{'arm':<16}{'fit_s':>9}{'fit_steps_per_s':>17}{'steady_s':>10}{'steady_steps_per_s':>20}{'last_loss':>11}")
    for name, (fit_s, steady_s) in best.items():
        print(f"{name:<16}{fit_s:>9.3f}{args.steps / fit_s:>17.1f}{steady_s:>10.3f}{steady_steps / steady_s:>20.1f}"
              f"{trained[name][1]:>11.4f}")
    (l_fit, l_steady), (t_fit, t_steady), (n_fit, n_steady) = best["lightning"], best["torch"], best["lightning_nolog"]
    print(f"throughput_ratio_fit: {t_fit / l_fit:.3f}  (lightning / torch steps per second; target >= 0.95)")
    print(f"throughput_ratio_steady: {t_steady / l_steady:.3f}")
    print(f"throughput_ratio_nolog_fit: {t_fit / n_fit:.3f}  (lightning without self.log / torch)")
    print(f"throughput_ratio_nolog_steady: {t_steady / n_steady:.3f}")
    log_ms = 1000 * (l_steady - n_steady) / steady_steps
    print(f"log_cost_ms_per_step: {log_ms:.2f}  (steady, lightning - lightning_nolog)")
    print(f"max_param_diff: {max_param_diff(trained['lightning'][0], trained['torch'][0]):.2e}  (lightning vs torch; "
          f"nolog vs torch {max_param_diff(trained['lightning_nolog'][0], trained['torch'][0]):.2e})")


if __name__ == "__main__":
    main()
