"""A fresh, a reused and a killed-and-resumed UnFuSeD run write the same results.json for every method."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

TINY = {
    "teacher.encoder.width": "4", "teacher.module.hidden_dim": "32", "teacher.module.feat_dim": "16",
    "teacher.trainer.max_epochs": "6", "student.encoder.width": "4", "student.trainer.max_epochs": "3",
    "finetune.labels_per_class": "[1, 2]", "finetune.seeds": "[0, 1]", "finetune.trainer.max_epochs": "3",
    "pictures": "false",
}
METHODS = {"supervised", "ssl+finetune", "unfused"}


def _command(output: Path) -> list[str]:
    overrides = [part for key, value in TINY.items() for part in (f"--{key}", value)]
    return [sys.executable, "-m", "fewlabel.plugins", "run", "unfused", "--output", str(output), "--logger", "none",
            *overrides]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


def _run(output: Path) -> dict[str, Any]:
    proc = subprocess.run(_command(output), capture_output=True, text=True, env=_env(), timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((output / "results.json").read_text())


def _kill_when(output: Path, ready: Any, sig: int = signal.SIGKILL) -> None:
    """Start the run and send it ``sig`` (SIGKILL, or SIGINT: Ctrl-C) as soon as ``ready(output)`` holds
    (a checkpoint or result on disk); check that it stopped and left no results and no half-written file."""
    proc = subprocess.Popen(_command(output), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_env())
    deadline = time.monotonic() + 600
    while not ready(output) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before it could be stopped"
    proc.send_signal(sig)
    # Ctrl-C inside a fit: Lightning's graceful shutdown exits with 1; elsewhere Python dies of SIGINT
    assert proc.wait(timeout=120) in ((-signal.SIGKILL,) if sig == signal.SIGKILL else (1, -signal.SIGINT))
    assert not (output / "results.json").exists() and (output / "config.yaml").exists()
    assert not [path for path in output.rglob("*") if path.name.endswith((".tmp", ".tmp.png"))]


def _comparable(results: dict[str, Any]) -> dict[str, Any]:
    """results.json without the wall-clock fields."""
    runs = [{k: v for k, v in run.items() if k != "seconds"} for run in results["runs"]]
    return {"rows": results["rows"], "runs": runs, "pseudo_labels": results["pseudo_labels"]}


def test_fresh_reused_and_killed_runs_give_identical_results(tmp_path: Path) -> None:
    fresh = _comparable(_run(tmp_path / "fresh"))
    assert {row["method"] for row in fresh["rows"]} == METHODS

    # the same command with the teacher and the student reused: every fine-tune run is recomputed
    shutil.copytree(tmp_path / "fresh", tmp_path / "reused", ignore=shutil.ignore_patterns("finetune", "results.json"))
    assert _comparable(_run(tmp_path / "reused")) == fresh

    # killed in the middle of the teacher, then in the middle of the fine-tune runs, then finished
    killed = tmp_path / "killed"
    _kill_when(killed, lambda out: (out / "teacher" / "last.ckpt").exists())
    assert not (killed / "teacher" / "final.ckpt").exists()
    _kill_when(killed, lambda out: len(list(out.glob("finetune/*/*.json"))) >= 2)
    assert _comparable(_run(killed)) == fresh

    # Ctrl-C in the middle of the teacher, of the student, then of the fine-tune runs, then finished
    interrupted = tmp_path / "interrupted"
    _kill_when(interrupted, lambda out: (out / "teacher" / "last.ckpt").exists(), signal.SIGINT)
    assert not (interrupted / "teacher" / "final.ckpt").exists()
    _kill_when(interrupted, lambda out: (out / "student" / "last.ckpt").exists(), signal.SIGINT)
    assert (interrupted / "teacher" / "final.ckpt").exists() and not (interrupted / "student" / "final.ckpt").exists()
    _kill_when(interrupted, lambda out: len(list(out.glob("finetune/*/*.json"))) >= 2, signal.SIGINT)
    assert _comparable(_run(interrupted)) == fresh
