"""Tests of AudioFolderDataModule on tiny wav/flac files written into tmp_path."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from fewlabel.datamodules import AudioFileDataset, AudioFolderDataModule

SR = 16000

pytestmark = pytest.mark.filterwarnings("ignore:ignored 1 file:UserWarning")  # the notes.txt in class a


def _tone(seconds: float, rate: int, freq: float = 440.0) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _write_classes(root: Path) -> None:
    """3 classes x 4 clips: 16 kHz mono 1 s, 8 kHz 0.5 s (resampled, padded), 16 kHz stereo 2 s."""
    for i in range(4):
        (root / "a").mkdir(parents=True, exist_ok=True)
        (root / "b").mkdir(parents=True, exist_ok=True)
        (root / "c").mkdir(parents=True, exist_ok=True)
        sf.write(root / "a" / f"{i}.wav", _tone(1.0, SR), SR, subtype="FLOAT")
        sf.write(root / "b" / f"{i}.wav", _tone(0.5, 8000), 8000, subtype="FLOAT")
        left = _tone(2.0, SR)
        stereo = np.stack([left, np.zeros_like(left)], axis=1)
        suffix = "flac" if i == 0 else "wav"
        sf.write(root / "c" / f"{i}.{suffix}", stereo, SR, **({} if i == 0 else {"subtype": "FLOAT"}))
    (root / "a" / "notes.txt").write_text("not audio")


@pytest.fixture
def audio_root(tmp_path: Path) -> Path:
    root = tmp_path / "audio"
    _write_classes(root)
    return root


def _setup(root: Path, **kwargs: object) -> AudioFolderDataModule:
    dm = AudioFolderDataModule(root, val_fraction=0.0, batch_size=4, **kwargs)  # type: ignore[arg-type]
    dm.setup()
    return dm


def test_shapes_and_splits(audio_root: Path) -> None:
    dm = _setup(audio_root, labels_per_class=1)
    assert dm.class_names == ["a", "b", "c"]
    assert dm.input_shape == (16000,)
    assert dm.num_unlabeled == 8 and len(dm.test_dataloader().dataset) == 4
    batch = next(iter(dm.unlabeled_dataloader()))
    assert batch["input"].shape == (4, 16000) and batch["input"].dtype == torch.float32
    labeled = next(iter(dm.labeled_dataloader()))
    assert sorted(labeled["label"].tolist()) == [0, 1, 2]
    assert _setup(audio_root, clip_seconds=0.25).input_shape == (4000,)


def test_resample_mono_and_pad(audio_root: Path) -> None:
    ds = AudioFileDataset([audio_root / "b" / "0.wav"], np.array([1]), sample_rate=SR, num_samples=SR)
    wave = ds.decode(audio_root / "b" / "0.wav")
    assert wave.shape == (8000,) and wave.dtype == torch.float32  # 0.5 s at 16 kHz
    x = ds.load(0, train=False)
    assert x.shape == (SR,) and x[:7900].abs().max() > 0.1 and (x[8000:] == 0).all()
    stereo = AudioFileDataset([audio_root / "c" / "1.wav"], np.array([2]))
    np.testing.assert_allclose(stereo.decode(audio_root / "c" / "1.wav").numpy(), _tone(2.0, SR) / 2, atol=1e-6)


def test_random_crop_in_train_centre_crop_in_eval(audio_root: Path) -> None:
    ds = AudioFileDataset([audio_root / "c" / "1.wav"], np.array([2]))
    full = ds.decode(audio_root / "c" / "1.wav")
    torch.testing.assert_close(ds.load(0, train=False), full[8000:24000])
    torch.testing.assert_close(ds.load(0, train=False), ds.load(0, train=False))
    torch.manual_seed(0)
    crops = [ds.load(0, train=True) for _ in range(4)]
    assert all(c.shape == (SR,) for c in crops)
    assert any(not torch.equal(crops[0], c) for c in crops[1:])


def test_no_cache_gives_the_same_inputs(audio_root: Path) -> None:
    cached, uncached = _setup(audio_root), _setup(audio_root, cache=False)
    a = next(iter(cached.unlabeled_dataloader(train=False)))["input"]
    b = next(iter(uncached.unlabeled_dataloader(train=False)))["input"]
    torch.testing.assert_close(a, b)


def test_bad_files_are_skipped_with_one_warning(audio_root: Path) -> None:
    (audio_root / "a" / "x.wav").write_bytes(np.random.default_rng(0).bytes(2048))
    sf.write(audio_root / "b" / "empty.wav", np.zeros(0, dtype=np.float32), SR)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dm = _setup(audio_root)
    ours = [w for w in caught if "unreadable" in str(w.message)]
    assert len(ours) == 1
    message = str(ours[0].message)
    assert "x.wav" in message and "empty.wav" in message and "skipped 2" in message
    assert dm.num_unlabeled + len(dm.test_dataloader().dataset) == 12
    assert sum(b["index"].numel() for b in dm.unlabeled_dataloader(train=False)) == 8


def test_train_test_layout_is_honoured(tmp_path: Path) -> None:
    _write_classes(tmp_path / "split" / "train")
    for name in ("a", "b", "c"):
        (tmp_path / "split" / "test" / name).mkdir(parents=True)
        sf.write(tmp_path / "split" / "test" / name / "t.wav", _tone(1.0, SR), SR)
    dm = _setup(tmp_path / "split")
    assert dm.class_names == ["a", "b", "c"]
    assert dm.num_unlabeled == 12
    test = next(iter(dm.test_dataloader()))
    assert test["label"].tolist() == [0, 1, 2] and test["index"].tolist() == [0, 1, 2]


def test_missing_root_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nowhere"):
        _setup(tmp_path / "nowhere")


def test_empty_root_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="empty has no class folders"):
        _setup(tmp_path / "empty")


def test_root_without_class_folders_is_an_error(tmp_path: Path) -> None:
    root = tmp_path / "flat"
    root.mkdir()
    sf.write(root / "loose.wav", _tone(1.0, SR), SR)
    with pytest.raises(ValueError, match=f"{root} has no class folders"):
        _setup(root)
    (root / "docs").mkdir()
    (root / "docs" / "readme.txt").write_text("no audio here")
    with pytest.raises(ValueError, match=re.escape(f"{root / 'docs'} holds 1 .txt file")):
        _setup(root)


def test_class_folders_without_usable_files_is_an_error(tmp_path: Path) -> None:
    root = tmp_path / "broken"
    (root / "a").mkdir(parents=True)
    (root / "a" / "x.wav").write_bytes(b"garbage")
    message = re.escape(f"class folder {root / 'a'} has no usable file: all its 1 .wav file failed to decode")
    with pytest.warns(UserWarning, match="x.wav"), pytest.raises(ValueError, match=message):
        _setup(root)


def test_class_whose_files_all_fail_to_decode_is_an_error(audio_root: Path) -> None:
    for path in (audio_root / "b").iterdir():
        path.write_bytes(b"not a wav")
    message = re.escape(f"class folder {audio_root / 'b'} has no usable file: all its 4 .wav files failed to decode")
    with pytest.warns(UserWarning, match="unreadable"), pytest.raises(ValueError, match=message):
        _setup(audio_root)


@pytest.mark.skipif("MP3" not in sf.available_formats(), reason="this libsndfile cannot write MP3")
def test_mp3_class_is_not_dropped(audio_root: Path) -> None:
    (audio_root / "mp3").mkdir()
    for i in range(4):
        sf.write(audio_root / "mp3" / f"{i}.mp3", _tone(1.0, SR, freq=220.0), SR, format="MP3")
    dm = _setup(audio_root, labels_per_class=1)
    assert dm.class_names == ["a", "b", "c", "mp3"]
    assert dm.num_unlabeled + len(dm.test_dataloader().dataset) == 16
    assert sorted(next(iter(dm.labeled_dataloader()))["label"].tolist()) == [0, 1, 2, 3]
    assert AudioFolderDataModule.extensions == tuple(sorted(AudioFolderDataModule.extensions))
    assert {".flac", ".mp3", ".ogg", ".wav"} <= set(AudioFolderDataModule.extensions)


def test_class_folder_of_unaccepted_files_is_an_error(audio_root: Path) -> None:
    (audio_root / "notes").mkdir()
    for i in range(3):
        (audio_root / "notes" / f"{i}.txt").write_text("not audio")
    with pytest.raises(ValueError, match=re.escape(f"{audio_root / 'notes'} holds 3 .txt files")):
        _setup(audio_root)


def test_unaccepted_files_are_ignored_with_one_warning(tmp_path: Path) -> None:
    _write_classes(tmp_path / "split" / "train")  # train/a holds notes.txt
    for name in ("a", "b", "c"):
        (tmp_path / "split" / "test" / name).mkdir(parents=True)
        sf.write(tmp_path / "split" / "test" / name / "t.wav", _tone(1.0, SR), SR)
    (tmp_path / "split" / "test" / "c" / "cover.jpg").write_bytes(b"jpeg")
    (tmp_path / "split" / "test" / "c" / "README").write_text("about c")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dm = _setup(tmp_path / "split")
    ours = [str(w.message) for w in caught if "ignored" in str(w.message)]
    assert len(ours) == 1 and ours[0].startswith("ignored 3 file(s)")
    assert f"{tmp_path / 'split' / 'train' / 'a'}: 1 .txt file" in ours[0]
    assert f"{tmp_path / 'split' / 'test' / 'c'}: 1 .jpg file, 1 extension-less file" in ours[0]
    assert dm.num_unlabeled == 12


def test_single_sample_class_names_its_folder(audio_root: Path) -> None:
    (audio_root / "d").mkdir()
    sf.write(audio_root / "d" / "only.wav", _tone(1.0, SR), SR)
    with pytest.raises(ValueError, match=re.escape(f"class '{audio_root / 'd'}' has a single sample")):
        _setup(audio_root)


@pytest.mark.parametrize("kwargs", [{"sample_rate": 0}, {"clip_seconds": 0.0}, {"test_fraction": 0.0}])
def test_bad_arguments(tmp_path: Path, kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        AudioFolderDataModule(tmp_path, **kwargs)  # type: ignore[arg-type]
