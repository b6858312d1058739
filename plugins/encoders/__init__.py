"""Encoders: the registry, the encoder contract and the built-in encoders."""

from __future__ import annotations

from fewlabel.plugins.encoders.audio_ntt import AudioNTT
from fewlabel.plugins.encoders.base import Encoder
from fewlabel.plugins.encoders.frontend import LogMelFrontend, RunningNorm
from fewlabel.plugins.encoders.registry import ENCODERS, create_encoder, list_encoders, register_encoder
from fewlabel.plugins.encoders.small_cnn import SmallCNN
from fewlabel.plugins.encoders.timm_encoder import TimmEncoder

__all__ = [
    "AudioNTT",
    "ENCODERS",
    "Encoder",
    "LogMelFrontend",
    "RunningNorm",
    "SmallCNN",
    "TimmEncoder",
    "create_encoder",
    "list_encoders",
    "register_encoder",
]
