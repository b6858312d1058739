"""Checkpoint the global random number generators so a resumed run repeats the uninterrupted one."""

from __future__ import annotations

import random
from typing import Any

import lightning as L
import numpy as np
import torch


class RNGStateKeeper(L.Callback):
    """Save Python's, NumPy's and torch's (CPU and CUDA) global RNG states in every checkpoint and
    restore them on resume.

    Lightning checkpoints the model, optimiser and loop state but not the global generators that
    drive augmentation and data shuffling; with this callback a run resumed from an end-of-epoch
    checkpoint draws the same random numbers as the run that was never interrupted.

    Example:
        >>> import lightning as L
        >>> trainer = L.Trainer(callbacks=[RNGStateKeeper()], logger=False, enable_progress_bar=False)
        >>> any(isinstance(c, RNGStateKeeper) for c in trainer.callbacks)
        True
    """

    def state_dict(self) -> dict[str, Any]:
        name, keys, pos, has_gauss, cached = np.random.get_state()
        # plain Python values and tensors only, so that weights-only checkpoint loading accepts them
        numpy_state = [name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)]
        state: dict[str, Any] = {"python": random.getstate(), "numpy": numpy_state, "torch": torch.get_rng_state()}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if "python" in state_dict:
            random.setstate(state_dict["python"])
        if "numpy" in state_dict:
            name, keys, pos, has_gauss, cached = state_dict["numpy"]
            np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
        if "torch" in state_dict:
            torch.set_rng_state(state_dict["torch"])
        if state_dict.get("cuda") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state_dict["cuda"])
