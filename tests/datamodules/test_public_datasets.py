"""CIFAR-10, STL-10, Speech Commands v2 and ESC-50 on tiny copies in each dataset's own on-disk format
(the same folder and file names, binary layouts and metadata files), read by the real loaders."""

from __future__ import annotations

import csv
import pickle
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from fewlabel.datamodules import CIFAR10DataModule, ESC50DataModule, SpeechCommandsDataModule, STL10DataModule
from fewlabel.plugins.recipes.build import make_datamodule

CIFAR_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def write_cifar10(root: Path, per_batch: int = 20, test: int = 30) -> dict[str, np.ndarray]:
    """``cifar-10-batches-py`` as the python archive has it: pickled dicts of ``(N, 3072)`` uint8 rows
    (R, G, B planes of 32 x 32) and ``labels``; ``batches.meta`` with ``label_names``."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    written = {}
    for name, size in [*((f"data_batch_{i}", per_batch) for i in range(1, 6)), ("test_batch", test)]:
        data = rng.integers(0, 256, (size, 3072), dtype=np.uint8)
        labels = [i % 10 for i in range(size)]
        with open(folder / name, "wb") as handle:
            pickle.dump({"batch_label": name, "labels": labels, "data": data, "filenames": [f"{i}.png" for i in range(size)]},
                        handle)
        written[name] = data
    with open(folder / "batches.meta", "wb") as handle:
        pickle.dump({"label_names": CIFAR_CLASSES, "num_cases_per_batch": per_batch, "num_vis": 3072}, handle)
    return written


def test_cifar10_reads_the_python_archive_layout(tmp_path: Path) -> None:
    written = write_cifar10(tmp_path)
    dm = CIFAR10DataModule(tmp_path, labels_per_class=2, val_fraction=0.1, batch_size=8)
    dm.setup()
    assert dm.class_names == CIFAR_CLASSES and dm.input_shape == (3, 32, 32) and dm.channels == 3
    assert dm.num_unlabeled + len(dm.val_dataloader().dataset) == 100 and len(dm.labeled_indices) == 20
    test = next(iter(dm.test_dataloader()))
    assert len(dm.test_dataloader().dataset) == 30 and test["input"].dtype == torch.float32
    # sample 0 of the test split is test_batch row 0: channel planes of 32 x 32, scaled to [0, 1]
    expected = torch.from_numpy(written["test_batch"][0].reshape(3, 32, 32).astype(np.float32) / 255)
    assert torch.equal(test["input"][0], expected) and test["label"][0] == 0
    # the recipe selects it by name
    assert type(make_datamodule({"name": "cifar10", "root": str(tmp_path)})) is CIFAR10DataModule


def test_cifar10_missing_or_corrupt_files_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"CIFAR-10 not found.*cifar-10-batches-py.*download=True"):
        CIFAR10DataModule(tmp_path).setup()
    write_cifar10(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(FileNotFoundError, match="data_batch_1..5"):
        CIFAR10DataModule(tmp_path).setup()
    write_cifar10(tmp_path / "again")
    # verify=True is torchvision's MD5 check: these files are not the published ones
    with pytest.raises(FileNotFoundError, match="corrupted"):
        CIFAR10DataModule(tmp_path / "again", verify=True).setup()


def write_stl10(root: Path, train_per_class: int = 4, unlabeled: int = 12, test_per_class: int = 2) -> None:
    """``stl10_binary``: uint8 images stored column-major ``(N, 3, 96, 96)``, 1-based uint8 labels."""
    folder = root / "stl10_binary"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    for split, count in (("train", 10 * train_per_class), ("test", 10 * test_per_class)):
        rng.integers(0, 256, count * 3 * 96 * 96, dtype=np.uint8).tofile(folder / f"{split}_X.bin")
        (np.arange(count) % 10 + 1).astype(np.uint8).tofile(folder / f"{split}_y.bin")
    rng.integers(0, 256, unlabeled * 3 * 96 * 96, dtype=np.uint8).tofile(folder / "unlabeled_X.bin")
    (folder / "class_names.txt").write_text("\n".join(CIFAR_CLASSES[:6] + ["monkey", "horse2", "ship2", "truck2"]))


def test_stl10_pools_the_unlabeled_split_and_draws_labels_from_the_labeled_one(tmp_path: Path) -> None:
    write_stl10(tmp_path)
    dm = STL10DataModule(tmp_path, labels_per_class=3, val_fraction=0.25, batch_size=8)
    dm.setup()
    assert dm.input_shape == (3, 96, 96) and dm.class_names[6] == "monkey"
    # validation: a quarter of the 40 labeled images (one per class); the 12 unlabeled ones all stay in the pool
    assert len(dm.val_dataloader().dataset) == 10 and dm.num_unlabeled == 30 + 12
    assert (dm.pool_targets == -1).sum() == 12
    assert (dm.pool_targets[dm.labeled_indices] >= 0).all() and len(dm.labeled_indices) == 30
    assert len(dm.test_dataloader().dataset) == 20
    assert set(next(iter(dm.val_dataloader()))["label"].tolist()) == set(range(10))
    without = STL10DataModule(tmp_path, unlabeled=False, labels_per_class=1, val_fraction=0.25)
    without.setup()
    assert without.num_unlabeled == 30 and (without.pool_targets >= 0).all()
    (tmp_path / "stl10_binary" / "class_names.txt").unlink()
    with pytest.raises(FileNotFoundError, match="class_names.txt is missing"):
        STL10DataModule(tmp_path).setup()
    with pytest.raises(FileNotFoundError, match=r"STL-10 not found.*unlabeled_X\.bin"):
        STL10DataModule(tmp_path / "nothing").setup()


def write_speech_commands(root: Path, words: tuple[str, ...] = ("yes", "no", "up"), speakers: int = 6) -> Path:
    """``SpeechCommands/speech_commands_v0.02/<word>/<speaker>_nohash_<n>.wav`` + the two split lists."""
    folder = root / "SpeechCommands" / "speech_commands_v0.02"
    rng = np.random.default_rng(2)
    lines: dict[str, list[str]] = {"validation_list.txt": [], "testing_list.txt": []}
    for word in words:
        (folder / word).mkdir(parents=True)
        for s in range(speakers):
            name = f"{s:08x}_nohash_0.wav"
            length = 16000 if s % 2 else 12000  # some clips are shorter than a second
            sf.write(folder / word / name, (0.1 * rng.standard_normal(length)).astype(np.float32), 16000)
            if s == 0:
                lines["validation_list.txt"].append(f"{word}/{name}")
            elif s == 1:
                lines["testing_list.txt"].append(f"{word}/{name}")
    (folder / "_background_noise_").mkdir()
    sf.write(folder / "_background_noise_" / "white_noise.wav", np.zeros(32000, dtype=np.float32), 16000)
    for name, entries in lines.items():
        (folder / name).write_text("\n".join(entries) + "\n")
    return folder


def test_speech_commands_uses_the_official_validation_and_test_lists(tmp_path: Path) -> None:
    folder = write_speech_commands(tmp_path)
    dm = SpeechCommandsDataModule(tmp_path, labels_per_class=2, batch_size=4)
    dm.setup()
    assert dm.class_names == ["no", "up", "yes"] and dm.input_shape == (16000,)
    assert dm.num_unlabeled == 3 * 4 and len(dm.val_dataloader().dataset) == 3 and len(dm.test_dataloader().dataset) == 3
    val = next(iter(dm.val_dataloader()))
    # validation sample 0 is the first line of validation_list.txt (yes/00000000...), zero-padded to 1 s
    clip, _ = sf.read(folder / "yes" / "00000000_nohash_0.wav", dtype="float32")
    first = int(np.flatnonzero(val["label"].numpy() == 2)[0])
    assert torch.allclose(val["input"][first, :12000], torch.from_numpy(clip)) and val["input"][first, 12000:].abs().sum() == 0
    digits = SpeechCommandsDataModule(tmp_path, classes=["yes", "no"], val_fraction=0.0, labels_per_class=1)
    digits.setup()
    assert digits.class_names == ["yes", "no"] and digits.num_unlabeled == 8 and len(digits.val_dataloader().dataset) == 0
    with pytest.raises(ValueError, match=r"no word folder \['seven'\].*its words: \['no', 'up', 'yes'\]"):
        SpeechCommandsDataModule(tmp_path, classes=["yes", "seven"]).setup()
    with pytest.raises(ValueError, match="distinct words"):
        SpeechCommandsDataModule(tmp_path, classes=["yes", "yes"])
    (folder / "testing_list.txt").unlink()
    with pytest.raises(FileNotFoundError, match="testing_list.txt is missing"):
        SpeechCommandsDataModule(tmp_path).setup()


ESC_COLUMNS = ["filename", "fold", "target", "category", "esc10", "src_file", "take"]


def write_esc50(root: Path) -> None:
    """``meta/esc50.csv`` + ``audio/<fold>-<src>-<take>-<target>.wav`` (44.1 kHz), as in the ESC-50 repository."""
    (root / "meta").mkdir(parents=True)
    (root / "audio").mkdir()
    rng = np.random.default_rng(3)
    classes = {0: ("dog", True), 1: ("rooster", True), 5: ("cat", False)}
    rows = []
    for fold in range(1, 6):
        for target, (category, esc10) in classes.items():
            for take in "AB":
                name = f"{fold}-{1000 + target}-{take}-{target}.wav"
                sf.write(root / "audio" / name, (0.1 * rng.standard_normal(44100 // 4)).astype(np.float32), 44100)
                rows.append([name, fold, target, category, str(esc10), str(1000 + target), take])
    with open(root / "meta" / "esc50.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(ESC_COLUMNS)
        writer.writerows(rows)


def test_esc50_splits_by_fold_and_resamples(tmp_path: Path) -> None:
    write_esc50(tmp_path)
    dm = ESC50DataModule(tmp_path, test_fold=3, clip_seconds=0.25, labels_per_class=2, val_fraction=0.25)
    dm.setup()
    assert dm.class_names == ["dog", "rooster", "cat"] and dm.input_shape == (4000,)  # 0.25 s at 16 kHz
    assert len(dm.test_dataloader().dataset) == 6 and dm.num_unlabeled + len(dm.val_dataloader().dataset) == 24
    assert all(path.name.startswith("3-") for path in dm._test.files)  # fold 3 is the test split
    esc10 = ESC50DataModule(tmp_path, esc10=True, clip_seconds=0.25, labels_per_class=1)
    esc10.setup()
    assert esc10.class_names == ["dog", "rooster"]
    with pytest.raises(ValueError, match="test_fold must be one of 1-5"):
        ESC50DataModule(tmp_path, test_fold=0)
    with open(tmp_path / "meta" / "esc50.csv", "w") as handle:
        handle.write("filename,target\nx.wav,0\n")
    with pytest.raises(ValueError, match=r"lacks the columns \['fold', 'category', 'esc10'\]"):
        ESC50DataModule(tmp_path).setup()
    with pytest.raises(FileNotFoundError, match=r"meta/esc50\.csv is missing"):
        ESC50DataModule(tmp_path / "nothing").setup()
