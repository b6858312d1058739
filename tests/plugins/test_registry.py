"""One Registry type names every family of components."""

from __future__ import annotations

import pytest
import torch
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
    assert {"byola", "image"} <= set(AUGMENTS.names()) and OPTIMIZERS.names() == ["adam", "adamw", "sgd"]
    assert isinstance(create_encoder("small_cnn", width=2), nn.Module)
    assert create_augment("none") is None and isinstance(create_augment("image"), nn.Module)
    with pytest.raises(ValueError, match=r"unknown encoder 'small_cn' \(did you mean 'small_cnn'\?\).*'timm:<model"):
        create_encoder("small_cn")
    with pytest.raises(ValueError, match=r"unknown augment 'imge' \(did you mean 'image'\?\).* or 'none'"):
        create_augment("imge")


def test_registry_iterates_sorted_names_and_has_a_length() -> None:
    things: Registry[object] = Registry("thing")
    for name in ("b", "a", "c"):
        things.register(name)(object)
    assert list(things) == ["a", "b", "c"] == things.names() and len(things) == 3
    assert "Registry('thing'" in repr(things)


def test_every_family_offers_create_and_list() -> None:
    from fewlabel.plugins.heads import HEADS, DINOHead, create_head, list_heads
    from fewlabel.plugins.methods import METHODS, SimCLR, create_method, list_methods
    from fewlabel.plugins.optim import OPTIMIZERS, create_optimizer, list_optimizers
    from fewlabel.plugins.recipes import create_datamodule, list_datamodules
    from fewlabel.plugins.recipes.build import DATAMODULES

    assert list_heads() == HEADS.names() == ["aux_head", "bd_cspn", "dino_head", "gda", "linear", "logistic",
                                             "projection_mlp", "protonet", "simpleshot"]
    assert list_optimizers() == OPTIMIZERS.names() == ["adam", "adamw", "sgd"]
    assert list_datamodules() == DATAMODULES.names() == ["audio_folder", "cifar10", "digits", "esc50", "huggingface",
                                                         "image_folder", "speech_commands", "stl10"]
    assert list_methods() == METHODS.names()
    assert {"byol", "deepcluster_v2", "dino", "rotnet", "simclr"} <= set(list_methods())
    assert all(isinstance(r, Registry) for r in (HEADS, METHODS, DATAMODULES))

    linear = create_head("linear", in_dim=8, out_dim=3, bias=False)
    assert type(linear) is nn.Linear and linear.weight.shape == (3, 8) and linear.bias is None
    assert create_head("linear", in_dim=8, out_dim=3).bias is not None
    assert isinstance(create_head("dino_head", in_dim=8, out_dim=16, hidden_dim=8, bottleneck_dim=4), DINOHead)
    aux = create_head("aux_head", in_dim=8, hidden_dim=4, num_classes=3)
    assert aux[0].in_features == 8 and aux[-1].out_features == 3
    assert create_head("projection_mlp", dims=[8, 16, 4])[-1].out_features == 4

    assert isinstance(create_method("simclr", encoder={"name": "small_cnn", "width": 4}), SimCLR)
    params = [torch.zeros(2, requires_grad=True)]
    sgd = create_optimizer("sgd", params=params, lr=0.5, weight_decay=0.0, momentum=0.9)
    assert isinstance(sgd, torch.optim.SGD) and sgd.defaults["lr"] == 0.5 and sgd.defaults["momentum"] == 0.9
    assert isinstance(create_optimizer("adamw", params=params, lr=0.1, weight_decay=0.01, momentum=0.9),
                      torch.optim.AdamW)
    dm = create_datamodule("digits", labels_per_class=2, seed=1)
    assert type(dm).__name__ == "DigitsDataModule" and (dm.labels_per_class, dm.seed) == (2, 1)


@pytest.mark.parametrize(("family", "name", "message"), [
    ("head", "dino", r"unknown head 'dino' \(did you mean 'dino_head'\?\); choose one of \[.aux_head., .bd_cspn., .dino_head."),
    ("head", "linaer", r"unknown head 'linaer' \(did you mean 'linear'\?\)"),
    ("method", "simclrr", r"unknown method 'simclrr' \(did you mean 'simclr'\?\); choose one of \["),
    ("optimizer", "adamm",
     r"unknown optimizer 'adamm' \(did you mean 'adam'\?\); choose one of \['adam', 'adamw', 'sgd'\]"),
    ("datamodule", "digit", r"unknown datamodule 'digit' \(did you mean 'digits'\?\); choose one of \['audio_folder'"),
    ("encoder", "smallcnn", r"unknown encoder 'smallcnn' \(did you mean 'small_cnn'\?\)"),
])
def test_unknown_names_give_the_closest_name(family: str, name: str, message: str) -> None:
    from fewlabel.plugins.heads import create_head
    from fewlabel.plugins.methods import create_method
    from fewlabel.plugins.optim import create_optimizer
    from fewlabel.plugins.recipes import create_datamodule

    create = {"head": create_head, "method": create_method, "optimizer": create_optimizer,
              "datamodule": create_datamodule, "encoder": create_encoder}[family]
    with pytest.raises(ValueError, match=message):
        create(name)


def test_a_head_name_is_taken_once() -> None:
    from fewlabel.plugins.heads import register_head
    from fewlabel.plugins.heads.registry import HEADS

    with pytest.raises(ValueError, match="head 'linear' is already registered"):
        register_head("linear")(nn.Linear)
    assert "linear" in HEADS and len(HEADS) == 9


def test_an_import_path_names_a_component_that_is_not_registered() -> None:
    """Like a class_path: a user's own class or function, by its dotted import path, with no registration."""
    from fewlabel.plugins.encoders import SmallCNN, create_encoder
    from fewlabel.plugins.methods import METHODS, SimCLR

    assert METHODS.get("fewlabel.plugins.methods.simclr.SimCLR") is SimCLR
    assert isinstance(create_encoder("fewlabel.plugins.encoders.SmallCNN", width=4), SmallCNN)
    with pytest.raises(ValueError, match=r"cannot import method 'fewlabel\.plugins\.methods\.SimCLRR': .*SimCLRR"):
        METHODS.get("fewlabel.plugins.methods.SimCLRR")
    with pytest.raises(ValueError, match=r"cannot import method 'no_such_package\.Method': No module named"):
        METHODS.get("no_such_package.Method")
    with pytest.raises(ValueError, match=r"method 'fewlabel\.plugins\.methods\.__all__' is a list, not a class"):
        METHODS.get("fewlabel.plugins.methods.__all__")
