"""Build a small spoken-digits dataset ("zero" .. "nine") with the espeak-ng speech synthesiser.

It is a real (if synthetic) speech task for trying ``examples/unfused_audio.yaml`` offline: every
clip is one English digit word, spoken by a random espeak-ng voice (accent + voice variant) at a
random speed and pitch, then trimmed, given a random gain, placed at a random offset in
a one-second clip with a little background noise, and written as 16 kHz mono 16-bit PCM::

    ROOT/zero/zero_000.wav  ROOT/zero/zero_001.wav  ...  ROOT/nine/nine_049.wav

The output depends only on ``--seed`` and ``--per-class`` (and on the espeak-ng version).
Needs the ``espeak-ng`` program (Debian/Ubuntu: ``apt-get install espeak-ng``).

Example:
    python examples/make_spoken_digits.py --root data/spoken_digits --per-class 50
    fewlabel run unfused --config examples/unfused_audio.yaml --data.root data/spoken_digits
"""

from __future__ import annotations

import argparse
import io
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF

DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
SAMPLE_RATE = 16000
CLIP_SECONDS = 1.0
# espeak-ng English voices (accents) and voice variants (formant sets: male, female, others).
VOICES = ("en-us", "en", "en-gb-scotland", "en-gb-x-rp", "en-gb-x-gbclan", "en-gb-x-gbcwmd", "en-029")
VARIANTS = ("m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4", "f5",
            "klatt", "klatt2", "klatt3", "croak", "Andy", "Annie", "david", "linda", "steph", "max")


def synthesise(word: str, voice: str, speed: int, pitch: int) -> tuple[np.ndarray, int]:
    """Run ``espeak-ng`` once and return ``(mono float32 waveform, sample rate)``.

    Raises:
        RuntimeError: espeak-ng failed or produced no audio.
    """
    cmd = ["espeak-ng", "-v", voice, "-s", str(speed), "-p", str(pitch), "--stdout", word]
    proc = subprocess.run(cmd, capture_output=True, check=False)
    if proc.returncode != 0 or not proc.stdout:
        raise RuntimeError(f"espeak-ng failed for {cmd}: {proc.stderr.decode(errors='replace').strip()}")
    data, rate = sf.read(io.BytesIO(proc.stdout), dtype="float32", always_2d=True)
    if data.shape[0] == 0:
        raise RuntimeError(f"espeak-ng produced no audio for {cmd}")
    return data.mean(axis=1), int(rate)


def trim(wave: np.ndarray, threshold_db: float = -40.0) -> np.ndarray:
    """Cut leading and trailing samples quieter than ``threshold_db`` below the peak."""
    level = np.abs(wave)
    loud = np.flatnonzero(level > level.max() * 10 ** (threshold_db / 20))
    return wave[loud[0] : loud[-1] + 1] if loud.size else wave


def make_clip(word: str, rng: np.random.Generator) -> np.ndarray:
    """One randomised utterance of ``word`` as a ``CLIP_SECONDS`` float32 clip at ``SAMPLE_RATE``."""
    voice = f"{VOICES[rng.integers(len(VOICES))]}+{VARIANTS[rng.integers(len(VARIANTS))]}"
    speed = int(rng.integers(120, 221))  # words per minute (espeak-ng default 175)
    pitch = int(rng.integers(15, 86))  # 0..99 (default 50)
    wave, rate = synthesise(word, voice, speed, pitch)
    wave = AF.resample(torch.from_numpy(np.ascontiguousarray(wave)), rate, SAMPLE_RATE).numpy()
    wave = trim(wave)
    length = int(CLIP_SECONDS * SAMPLE_RATE)
    if wave.shape[0] > length:  # very slow speech: keep the middle second
        start = (wave.shape[0] - length) // 2
        wave = wave[start : start + length]
    wave = wave / (np.abs(wave).max() + 1e-8) * rng.uniform(0.1, 0.9)  # random peak level
    clip = np.zeros(length, dtype=np.float32)
    offset = int(rng.integers(0, length - wave.shape[0] + 1))
    clip[offset : offset + wave.shape[0]] = wave
    snr_db = rng.uniform(15.0, 40.0)  # background noise relative to the word's RMS
    rms = float(np.sqrt(np.mean(wave**2))) + 1e-8
    clip += rng.normal(0.0, rms * 10 ** (-snr_db / 20), length).astype(np.float32)
    return np.clip(clip, -1.0, 1.0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, required=True, help="output folder (ROOT/CLASS/*.wav)")
    parser.add_argument("--per-class", type=int, default=50, help="clips per digit (default 50)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    args = parser.parse_args(argv)
    if args.per_class < 1:
        parser.error("--per-class must be at least 1")
    if shutil.which("espeak-ng") is None:
        print("error: the espeak-ng program is not installed; install it with `apt-get install espeak-ng` "
              "(Debian/Ubuntu) or `brew install espeak-ng` (macOS)", file=sys.stderr)
        return 1
    for d, word in enumerate(DIGITS):
        folder = args.root / word
        folder.mkdir(parents=True, exist_ok=True)
        for stale in folder.glob(f"{word}_*.wav"):  # a rerun with fewer clips leaves no leftovers
            stale.unlink()
        rng = np.random.default_rng([args.seed, d])  # per-class stream: classes do not depend on each other
        for i in range(args.per_class):
            sf.write(str(folder / f"{word}_{i:03d}.wav"), make_clip(word, rng), SAMPLE_RATE, subtype="PCM_16")
        print(f"{word}: {args.per_class} clips", flush=True)
    print(f"wrote {len(DIGITS) * args.per_class} clips to {args.root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
