"""The recipe's label-budget sweep (stage 4): draws trained together vs one Trainer per run.

Takes a finished UnFuSeD run folder (``--run DIR``: its ``config.yaml`` and the finished teacher and
student, which are reused, not retrained) and runs the recipe's stage 4 twice in this process, on
the run's data, methods, budgets and draws:

* ``separate``: ``finetune.draws_together=false``, one Lightning Trainer per fine-tune run;
* ``together``: ``finetune.draws_together=true``, the draws of each method and budget as one
  :class:`~fewlabel.plugins.methods.ClassifierEnsemble` in one Trainer.

It prints the wall time of each (and per method), the ratio, and how far the two agree: the largest
difference in test accuracy of any run, in test samples, and how many runs agree exactly. Extra
``--set KEY=VALUE`` config overrides (e.g. ``trainer.accelerator=gpu trainer.precision=16-mixed``)
apply to both arms; the teacher and student are reused only if their settings are unchanged.

    fewlabel run unfused --output runs/unfused
    python benchmarks/finetune_sweep.py --run runs/unfused
    python benchmarks/finetune_sweep.py --run runs/unfused --methods unfused --set num_threads=1
"""

from __future__ import annotations

import argparse
import copy
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fewlabel.datamodules import FewLabelDataModule
from fewlabel.plugins.recipes.build import make_datamodule
from fewlabel.plugins.recipes.config import load_config
from fewlabel.plugins.recipes.unfused import run_finetune, run_student, run_teacher


def load(config: dict[str, Any], run: Path,
         student: bool = True) -> tuple[FewLabelDataModule, dict[str, nn.Module]]:
    """The run's data and its finished teacher and (unless ``student=False``) student encoders.

    Both are reused from the run folder, not retrained.
    """
    dm = make_datamodule(config["data"])
    dm.setup("fit")
    teacher = run_teacher(config, dm, run, "none")
    encoders = {"teacher": teacher.encoder}
    if student:
        encoders["student"] = run_student(config, dm, teacher.encoder, run, "none")[0].encoder
    return dm, encoders


def sweep(config: dict[str, Any], dm: FewLabelDataModule, encoders: dict[str, nn.Module], together: bool,
          output: Path) -> tuple[float, dict[str, float], list[dict]]:
    """Stage 4 of ``config`` into ``output``; ``(seconds, seconds per method, rows)``.

    Each run copies the encoder it fine-tunes, so both arms start from the same ``encoders``.
    """
    config = copy.deepcopy(config)
    config["finetune"]["draws_together"] = together
    per_method: dict[str, float] = {}
    rows: list[dict] = []
    start = time.perf_counter()
    for method in config["finetune"]["methods"]:
        one = copy.deepcopy(config)
        one["finetune"]["methods"] = {method: config["finetune"]["methods"][method]}
        began = time.perf_counter()
        rows += run_finetune(one, dm, encoders, output, "none")
        per_method[method] = time.perf_counter() - began
    return time.perf_counter() - start, per_method, rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, default=Path("runs/unfused"), help="a finished UnFuSeD run folder")
    parser.add_argument("--methods", nargs="+", default=None, help="default: the run's methods")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides for both arms")
    parser.add_argument("--output", type=Path, default=None, help="write the figures as JSON here")
    args = parser.parse_args()
    stored = args.run / "config.yaml"
    if not stored.exists():
        raise SystemExit(f"{stored} not found: --run must be a finished UnFuSeD run folder (fewlabel run unfused)")
    config = load_config("unfused", stored, args.set)
    if args.methods:
        config["finetune"]["methods"] = {m: config["finetune"]["methods"][m] for m in args.methods}
    if config.get("num_threads"):
        torch.set_num_threads(int(config["num_threads"]))
    trainer = config.get("trainer") or {}
    on_gpu = torch.cuda.is_available() and trainer.get("accelerator") in ("gpu", "cuda", "auto")
    device = torch.cuda.get_device_name() if on_gpu else f"cpu, {torch.get_num_threads()} threads"
    print(f"run {args.run}; {device}; trainer {trainer}")
    dm, encoders = load(config, args.run)
    figures: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for arm in ("separate", "together"):
            seconds, per_method, rows = sweep(config, dm, encoders, arm == "together", Path(tmp) / arm)
            figures[arm] = {"seconds": seconds, "per_method": per_method, "rows": rows}
    sep, tog = figures["separate"], figures["together"]
    print(f"\n{'method':<14} {'separate (s)':>13} {'together (s)':>13} {'ratio':>7}")
    for method in sep["per_method"]:
        a, b = sep["per_method"][method], tog["per_method"][method]
        print(f"{method:<14} {a:>13.1f} {b:>13.1f} {a / b:>7.2f}")
    print(f"{'all':<14} {sep['seconds']:>13.1f} {tog['seconds']:>13.1f} {sep['seconds'] / tog['seconds']:>7.2f}")
    test_size = len(dm.test_dataloader().dataset)
    diffs = [abs(a["test_accuracy"] - b["test_accuracy"]) * test_size for a, b in zip(sep["rows"], tog["rows"])]
    print(f"runs: {len(diffs)}; equal test accuracy: {sum(d < 0.5 for d in diffs)}; largest difference: "
          f"{max(diffs):.0f} of {test_size} test samples")
    if args.output:
        args.output.write_text(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
