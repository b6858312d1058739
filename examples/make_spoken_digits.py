"""Build a spoken-digits dataset ("zero" .. "nine") with the espeak-ng speech synthesiser.

It is a real (if synthetic) speech task for trying ``examples/unfused_audio.yaml`` offline. Every
clip is one English digit word in a one-second, 16 kHz mono 16-bit PCM WAV file, ROOT/WORD/*.wav.
Each word is spoken by espeak-ng in a random voice (accent + voice variant, a formant set) at a
random speed and pitch, and trimmed of silence (a word longer than one second keeps its middle
second). ``--variety`` picks what happens around it:

``basic`` (the default) gave every spoken-digits result recorded in README.md and
benchmarks/README.md, e.g. ``--root data/spoken`` (50 clips per class)::

    ROOT/zero/zero_000.wav  ROOT/zero/zero_001.wav  ...  ROOT/nine/nine_049.wav

* voice: 7 English accents x 22 variants, a fixed list (``BASIC``);
* speed 120..220 words per minute and pitch 15..85 (espeak-ng's defaults are 175 and 50);
* the word gets a random peak level of 0.1..0.9 and a random offset;
* white noise 15..40 dB below the word.

Each class's clips are drawn one after another from ``numpy.random.default_rng([seed, digit])``;
the output is byte for byte that of this script before ``--variety`` existed.

``noisy`` and ``rich`` are harder::

    ROOT/zero/zero_0000.wav  ROOT/zero/zero_0001.wav  ...  ROOT/nine/nine_0499.wav

``noisy`` has more voices, speeds, pitches and background noise than ``basic``:

* voice: any English espeak-ng voice (accent) combined with any voice variant, both as listed by
  ``espeak-ng --voices=en`` and ``espeak-ng --voices=variant`` on this machine; MBROLA voices are
  left out (they need a separate program and voice files);
* speed 90..300 words per minute and pitch 0..99;
* the word is placed at a random offset;
* background noise: white, pink or brown noise 5..30 dB below the digit;
* the mixture is scaled to a random peak level of 0.1..0.9.

``rich`` is ``noisy`` in a room, with other talkers:

* babble (half the clips): 1..3 other talkers saying 1..3 non-digit words each, every talker
  10..25 dB below the digit, at random offsets;
* room reverb (half the clips): digit and babble are convolved with an exponentially decaying
  random impulse response (RT60 0.1..0.7 s, direct-to-reverberant ratio -3..10 dB).

Each clip's random draws come from ``numpy.random.default_rng([seed, digit, index])``.

Either way the files depend only on ``--seed``, ``--per-class`` and ``--variety`` (and on the
espeak-ng version, and for ``noisy`` and ``rich`` its voice list), not on ``--workers``; a smaller
``--per-class`` gives the first clips of a larger one. Rerunning into the same ROOT replaces every
class's clips, so no files are left behind. Needs the ``espeak-ng`` program
(Debian/Ubuntu: ``apt-get install espeak-ng``).

Examples:
    python examples/make_spoken_digits.py --root data/spoken   # basic, 500 clips: the recorded results
    fewlabel run unfused --config examples/unfused_audio.yaml --data.root data/spoken
    python examples/make_spoken_digits.py --root data/noisy5k --per-class 500 --variety noisy
    python examples/make_spoken_digits.py --root data/spoken5k --per-class 500 --variety rich

Timing: the ``rich`` command above with ``--workers 2`` (5,000 clips, 157 MB) took 1:59.8 on
2 shared CPU cores with espeak-ng 1.51.
"""

from __future__ import annotations

import argparse
import functools
import io
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import NamedTuple

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF

DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
# Background talkers' words: none is, contains or sounds like a digit word.
BABBLE_WORDS = ("apple", "table", "window", "garden", "river", "yellow", "paper", "music", "coffee",
                "market", "doctor", "pencil", "orange", "morning", "kitchen", "bottle", "rabbit",
                "silver", "little", "water", "happy", "station", "button", "castle", "dinner",
                "flower", "hello", "island", "jacket", "lemon", "mountain", "number", "pocket",
                "rocket", "summer", "ticket", "umbrella", "village", "winter", "yesterday")
SAMPLE_RATE = 16000
CLIP_SAMPLES = SAMPLE_RATE  # one second
NOISE_EXPONENTS = (0.0, 1.0, 2.0)  # power spectrum ~ 1/f**exponent: white, pink, brown


class Speakers(NamedTuple):
    """What a random talker is drawn from: espeak-ng voices, voice variants, speed and pitch ranges."""

    voices: Sequence[str]
    variants: Sequence[str]
    speeds: tuple[int, int]  # words per minute, both ends included
    pitches: tuple[int, int]  # 0..99, both ends included


# The ``basic`` variety's talkers: fixed, so the recorded results' data can be made again.
BASIC = Speakers(
    voices=("en-us", "en", "en-gb-scotland", "en-gb-x-rp", "en-gb-x-gbclan", "en-gb-x-gbcwmd", "en-029"),
    variants=("m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4", "f5",
              "klatt", "klatt2", "klatt3", "croak", "Andy", "Annie", "david", "linda", "steph", "max"),
    speeds=(120, 220),
    pitches=(15, 85),
)
# Probability of babble and, separately, of room reverb in a clip of each per-clip variety.
ROOM = {"noisy": 0.0, "rich": 0.5}
RICH_SPEEDS = (90, 300)
RICH_PITCHES = (0, 99)
# File-name digits: basic keeps its old names (zero_000.wav), rich uses at least 4 (zero_0000.wav).
BASIC_WIDTH = 3
RICH_WIDTH = 4


def espeak_voices() -> tuple[list[str], list[str]]:
    """The English espeak-ng voices (by file, e.g. ``gmw/en-US``) and the voice variants, sorted.

    Raises:
        RuntimeError: espeak-ng lists no English voice or no variant.
    """
    def listing(kind: str) -> list[str]:
        proc = subprocess.run(["espeak-ng", f"--voices={kind}"], capture_output=True, text=True, check=True)
        return proc.stdout.splitlines()[1:]  # below the header

    # Columns: Pty Language Age/Gender VoiceName File [Other Languages]; voice names have no spaces.
    rows = [line.split() for line in listing("en")]
    voices = sorted({row[4] for row in rows if len(row) >= 5 and row[1] != "variant" and not row[4].startswith("mb/")})
    # Variant files may contain a space ("!v/Mr serious"): take everything after "!v/".
    found = (re.search(r"\s!v/(.+?)\s*(\(.*\))?$", line) for line in listing("variant"))
    variants = sorted({match.group(1) for match in found if match})
    if not voices or not variants:
        raise RuntimeError(f"espeak-ng lists {len(voices)} English voices and {len(variants)} variants; need both")
    return voices, variants


def trim(wave: np.ndarray, threshold_db: float = -40.0) -> np.ndarray:
    """Cut leading and trailing samples quieter than ``threshold_db`` below the peak."""
    level = np.abs(wave)
    loud = np.flatnonzero(level > level.max() * 10 ** (threshold_db / 20))
    return wave[loud[0] : loud[-1] + 1] if loud.size else wave


def speak(text: str, rng: np.random.Generator, speakers: Speakers) -> np.ndarray:
    """``text`` by a random talker from ``speakers``: a trimmed float32 waveform at ``SAMPLE_RATE``.

    Raises:
        RuntimeError: espeak-ng failed or produced no audio.
    """
    voice = speakers.voices[rng.integers(len(speakers.voices))]
    variant = speakers.variants[rng.integers(len(speakers.variants))]
    speed = int(rng.integers(speakers.speeds[0], speakers.speeds[1] + 1))
    pitch = int(rng.integers(speakers.pitches[0], speakers.pitches[1] + 1))
    cmd = ["espeak-ng", "-v", f"{voice}+{variant}", "-s", str(speed), "-p", str(pitch), "--stdout", text]
    proc = subprocess.run(cmd, capture_output=True, check=False)
    if proc.returncode != 0 or not proc.stdout:
        raise RuntimeError(f"espeak-ng failed for {cmd}: {proc.stderr.decode(errors='replace').strip()}")
    data, rate = sf.read(io.BytesIO(proc.stdout), dtype="float32", always_2d=True)
    if data.shape[0] == 0 or not np.any(data):
        raise RuntimeError(f"espeak-ng produced no audio for {cmd}")
    wave = torch.from_numpy(np.ascontiguousarray(data.mean(axis=1)))
    return trim(AF.resample(wave, int(rate), SAMPLE_RATE).numpy())


def rms(wave: np.ndarray) -> float:
    """Root mean square of ``wave`` (never 0)."""
    return float(np.sqrt(np.mean(np.square(wave, dtype=np.float64)))) + 1e-8


def coloured_noise(rng: np.random.Generator, n: int, exponent: float) -> np.ndarray:
    """``n`` samples of unit-RMS noise whose power spectrum falls as ``1 / f**exponent``."""
    spectrum = np.fft.rfft(rng.standard_normal(n))
    freqs = np.fft.rfftfreq(n)
    freqs[0] = freqs[1]  # no infinite gain at DC
    noise = np.fft.irfft(spectrum * freqs ** (-exponent / 2), n)
    return noise / rms(noise)


def room_impulse_response(rng: np.random.Generator) -> np.ndarray:
    """A direct path plus exponentially decaying Gaussian noise (RT60 0.1..0.7 s, DRR -3..10 dB)."""
    rt60 = rng.uniform(0.1, 0.7)
    t = np.arange(1, int(rt60 * SAMPLE_RATE)) / SAMPLE_RATE
    tail = rng.standard_normal(t.shape[0]) * np.exp(-6.908 * t / rt60)  # -60 dB at t = rt60
    drr_db = rng.uniform(-3.0, 10.0)
    return np.concatenate([[1.0], tail / np.sqrt(np.sum(tail**2)) * 10 ** (-drr_db / 20)])


def reverberate(wave: np.ndarray, impulse_response: np.ndarray) -> np.ndarray:
    """``wave`` convolved with ``impulse_response`` (FFT), cut to ``wave``'s length."""
    n = wave.shape[0] + impulse_response.shape[0] - 1
    size = 1 << (n - 1).bit_length()
    return np.fft.irfft(np.fft.rfft(wave, size) * np.fft.rfft(impulse_response, size), size)[: wave.shape[0]]


def middle(wave: np.ndarray, length: int) -> np.ndarray:
    """``wave``, or its middle ``length`` samples where it is longer."""
    start = max(0, (wave.shape[0] - length) // 2)
    return wave[start : start + length]


def place(clip: np.ndarray, wave: np.ndarray, rng: np.random.Generator) -> None:
    """Add ``wave`` into ``clip`` at a random offset; a longer ``wave`` gives its middle part."""
    wave = middle(wave, clip.shape[0])
    offset = int(rng.integers(0, clip.shape[0] - wave.shape[0] + 1))
    clip[offset : offset + wave.shape[0]] += wave


def make_basic_clip(word: str, rng: np.random.Generator) -> np.ndarray:
    """One ``basic`` utterance of ``word`` with white noise: a ``CLIP_SAMPLES`` float32 clip.

    The draws and the float32 arithmetic are those of the pre-``--variety`` generator; keep them.
    """
    wave = middle(speak(word, rng, BASIC), CLIP_SAMPLES)
    wave = wave / (np.abs(wave).max() + 1e-8) * rng.uniform(0.1, 0.9)  # random peak level
    clip = np.zeros(CLIP_SAMPLES, dtype=np.float32)
    place(clip, wave, rng)
    snr_db = rng.uniform(15.0, 40.0)  # background noise relative to the word's RMS
    level = float(np.sqrt(np.mean(wave**2))) + 1e-8  # float32 mean, unlike rms()
    clip += rng.normal(0.0, level * 10 ** (-snr_db / 20), CLIP_SAMPLES).astype(np.float32)
    return np.clip(clip, -1.0, 1.0)


def make_rich_clip(word: str, rng: np.random.Generator, speakers: Speakers, room: float = 0.5) -> np.ndarray:
    """One ``rich`` utterance of ``word`` in a noisy room: a ``CLIP_SAMPLES`` float32 clip.

    ``room`` is the probability of babble and, separately, of reverb: 0.5 for ``rich``, 0 for ``noisy``
    (whose clip has the talker, offset and first draws of its ``rich`` twin).
    """
    speech = speak(word, rng, speakers)
    level = rms(speech)
    clip = np.zeros(CLIP_SAMPLES)
    place(clip, speech, rng)
    if rng.random() < room:  # babble: other talkers saying other words
        for _ in range(int(rng.integers(1, 4))):
            words = rng.choice(BABBLE_WORDS, size=int(rng.integers(1, 4)))
            talker = speak(" ".join(words), rng, speakers)
            place(clip, talker * level / rms(talker) * 10 ** (-rng.uniform(10.0, 25.0) / 20), rng)
    if rng.random() < room:
        clip = reverberate(clip, room_impulse_response(rng))
    noise = coloured_noise(rng, CLIP_SAMPLES, NOISE_EXPONENTS[rng.integers(len(NOISE_EXPONENTS))])
    clip += noise * level * 10 ** (-rng.uniform(5.0, 30.0) / 20)
    return (clip / np.abs(clip).max() * rng.uniform(0.1, 0.9)).astype(np.float32)


def save(clip: np.ndarray, root: Path, d: int, index: int, width: int) -> None:
    """Write clip ``index`` of digit ``d`` as ``ROOT/WORD/WORD_<index, width digits>.wav``."""
    sf.write(str(root / DIGITS[d] / f"{DIGITS[d]}_{index:0{width}d}.wav"), clip, SAMPLE_RATE, subtype="PCM_16")


def write_basic_class(d: int, root: Path, seed: int, per_class: int) -> None:
    """Write the ``basic`` clips of digit ``d``, one after another from the class's random stream."""
    rng = np.random.default_rng([seed, d])
    for index in range(per_class):
        save(make_basic_clip(DIGITS[d], rng), root, d, index, BASIC_WIDTH)


def write_rich_clip(task: tuple[int, int], root: Path, seed: int, width: int, speakers: Speakers,
                    room: float = 0.5) -> None:
    """Write ``rich`` (or ``noisy``) clip ``index`` of digit ``d`` (``task = (d, index)``) from its own random
    stream."""
    d, index = task
    clip = make_rich_clip(DIGITS[d], np.random.default_rng([seed, d, index]), speakers, room)
    save(clip, root, d, index, width)


def _report(done: Iterable[None], per_class: int, tasks_per_class: int) -> None:
    """Consume the finished tasks in order, printing a line after each class."""
    for n, _ in enumerate(done, start=1):
        if n % tasks_per_class == 0:
            print(f"{DIGITS[n // tasks_per_class - 1]}: {per_class} clips", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, required=True, help="output folder (ROOT/CLASS/*.wav)")
    parser.add_argument("--per-class", type=int, default=50, help="clips per digit (default 50)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--variety", choices=("basic", "noisy", "rich"), default="basic",
                        help="basic: the recorded results' data (default); noisy: more voices, speeds, pitches "
                             "and coloured noise; rich: noisy + babble and reverb")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                        help="processes synthesising in parallel (default: the number of CPUs; "
                             "basic uses at most one per class)")
    args = parser.parse_args(argv)
    if args.per_class < 1:
        parser.error(f"--per-class must be at least 1, got {args.per_class}")
    if args.workers < 1:
        parser.error(f"--workers must be at least 1, got {args.workers}")
    if args.seed < 0:
        parser.error(f"--seed must be non-negative, got {args.seed}")
    if shutil.which("espeak-ng") is None:
        print("error: the espeak-ng program is not installed; install it with `apt-get install espeak-ng` "
              "(Debian/Ubuntu) or `brew install espeak-ng` (macOS)", file=sys.stderr)
        return 1
    if args.variety == "basic":  # one task per class: each class is one random stream
        job = functools.partial(write_basic_class, root=args.root, seed=args.seed, per_class=args.per_class)
        tasks: list = list(range(len(DIGITS)))
        tasks_per_class = 1
    else:  # one task per clip: each clip is its own random stream
        voices, variants = espeak_voices()
        print(f"{len(voices)} English voices x {len(variants)} variants", flush=True)
        speakers = Speakers(voices, variants, RICH_SPEEDS, RICH_PITCHES)
        width = max(RICH_WIDTH, len(str(args.per_class - 1)))
        job = functools.partial(write_rich_clip, root=args.root, seed=args.seed, width=width, speakers=speakers,
                                room=ROOM[args.variety])
        tasks = [(d, i) for d in range(len(DIGITS)) for i in range(args.per_class)]
        tasks_per_class = args.per_class
    for word in DIGITS:
        folder = args.root / word
        folder.mkdir(parents=True, exist_ok=True)
        for stale in folder.glob(f"{word}_*.wav"):  # a rerun with fewer clips leaves no leftovers
            stale.unlink()
    # One torch thread in every process: the same resampling arithmetic whatever --workers is.
    if args.workers == 1:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            _report(map(job, tasks), args.per_class, tasks_per_class)
        finally:
            torch.set_num_threads(threads)
    else:
        with ProcessPoolExecutor(min(args.workers, len(tasks)), initializer=torch.set_num_threads,
                                 initargs=(1,)) as pool:
            _report(pool.map(job, tasks, chunksize=1 if tasks_per_class == 1 else 8), args.per_class,
                    tasks_per_class)
    print(f"wrote {len(DIGITS) * args.per_class} clips to {args.root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
