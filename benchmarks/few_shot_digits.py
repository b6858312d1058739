"""Few-shot heads on the UnFuSeD student encoder of digits: 5-way 1-shot and 5-shot, mean +- 95 % CI.

Every few-shot head (``fewlabel.plugins.heads.list_few_shot_heads()``) on the frozen student encoder
of a finished ``fewlabel run unfused`` (``RUN/student/final.ckpt``, the run's ``config.yaml``), and on
the raw pixels as a reference row. Episodes (N = 5 classes, K = 1 or 5 support and Q = 15 query
samples per class, 1,000 episodes, seed 0) are drawn from the held-out TEST split; every head sees
the same episodes. SimpleShot centres on the mean embedding of the unlabeled pool (its "base" data;
no labels). The figure is the mean episode accuracy and the half-width of its 95 % confidence
interval, ``1.96 * std / sqrt(episodes)``.

    python benchmarks/few_shot_digits.py --run runs/unfused [--episodes 1000] [--quick]

``--quick`` runs 20 episodes per cell (seconds).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch import nn

from fewlabel.plugins.gather import gather_embeddings
from fewlabel.plugins.heads import list_few_shot_heads
from fewlabel.plugins.recipes.build import make_datamodule
from fewlabel.plugins.recipes.config import load_config
from fewlabel.plugins.recipes.fewshot import evaluate_heads, load_encoder, pool_mean

SHOTS = (1, 5)


def _cell(mean: float, ci95: float) -> str:
    return f"{100 * mean:.2f} +- {100 * ci95:.2f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default="runs/unfused", help="a finished `fewlabel run unfused` folder")
    parser.add_argument("--episodes", type=int, default=1000)
    parser.add_argument("--ways", type=int, default=5)
    parser.add_argument("--queries", type=int, default=15)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="20 episodes per cell")
    args = parser.parse_args(argv)
    episodes = 20 if args.quick else args.episodes
    run = Path(args.run)
    checkpoint = run / "student" / "final.ckpt"
    if not checkpoint.is_file():
        raise SystemExit(f"no student checkpoint at {checkpoint}: run `fewlabel run unfused --output {run}` first "
                         f"(or pass --run RUN_FOLDER)")
    config_path = run / "config.yaml"
    config = load_config("unfused", config_path if config_path.is_file() else None)
    if config.get("num_threads") is not None:
        torch.set_num_threads(int(config["num_threads"]))
    start = time.perf_counter()
    student, _ = load_encoder(checkpoint, config, "student")
    pixels = nn.Flatten()
    dm = make_datamodule(config["data"])
    dm.setup("fit")
    heads = list_few_shot_heads()
    print(f"run: {run}  checkpoint: {checkpoint}  data: {config['data'].get('name', 'digits')} test split")
    print(f"{args.ways}-way, {args.queries} queries per class, {episodes} episodes per cell, seed {args.seed}; "
          f"accuracy % (mean +- 95% CI)")
    print(f"{'features':<16} {'dim':>4} {'head':<11} " + " ".join(f"{f'{k}-shot':>15}" for k in SHOTS)
          + f" {'seconds':>8}")
    for name, encoder in (("unfused_student", student), ("raw_pixels", pixels)):
        test = gather_embeddings(encoder, dm.test_dataloader())
        base = pool_mean(encoder, dm)
        rows = evaluate_heads(test.embeddings, test.labels, heads, n_way=args.ways, shots=SHOTS,
                              n_query=args.queries, num_episodes=episodes, seed=args.seed, base_mean=base)
        for head in heads:
            cells = [r for r in rows if r["head"] == head]
            figures = " ".join(f"{_cell(r['accuracy'], r['ci95']):>15}" for r in cells)
            seconds = sum(r["seconds"] for r in cells)
            print(f"{name:<16} {test.embeddings.shape[1]:>4} {head:<11} {figures} {seconds:>8.1f}")
    print(f"chance: {100 / args.ways:.1f} %")
    print(f"wall_time_s: {time.perf_counter() - start:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
