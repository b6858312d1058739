"""One Registry type names every family of components."""

from __future__ import annotations

import pytest
from torch import nn

from fewlabel.plugins import Registry, create_augment, create_encoder, list_encoders
from fewlabel.plugins.augment.factory import AUGMENTS
from fewlabel.plugins.encoders.registry import ENCODERS
from fewlabel.plugins.optim.optimizers import OPTIMIZERS


def test_register_create_names_and_errors() -> None:
    things: Registry[object] = Registry("thing")

    @things.register("box")
    class Box:
        def __init__(self, size: int = 1) -> None:
            self.size = size

    assert things.names() == ["box"] and "box" in things and things.get("box") is Box
    assert things.create("box", size=4).size == 4
    with pytest.raises(ValueError, match="thing 'box' is already registered"):
        things.register("box")(Box)
    with pytest.raises(ValueError, match=r"unknown thing 'bx' \(did you mean 'box'\?\); choose one of \['box'\]"):
        things.get("bx")


def test_every_family_is_a_registry() -> None:
    assert all(isinstance(r, Registry) for r in (ENCODERS, AUGMENTS, OPTIMIZERS))
    assert {"audio_ntt", "small_cnn", "timm"} <= set(list_encoders())
    assert AUGMENTS.names() == ["byola", "image"] and OPTIMIZERS.names() == ["adam", "adamw", "sgd"]
    assert isinstance(create_encoder("small_cnn", width=2), nn.Module)
    assert create_augment("none") is None and isinstance(create_augment("image"), nn.Module)
    with pytest.raises(ValueError, match=r"unknown encoder 'small_cn' \(did you mean 'small_cnn'\?\).*'timm:<model"):
        create_encoder("small_cn")
    with pytest.raises(ValueError, match=r"unknown augment 'imge' \(did you mean 'image'\?\).* or 'none'"):
        create_augment("imge")
