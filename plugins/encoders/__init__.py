"""Encoders: the registry, the encoder contract and the built-in encoders."""

from __future__ import annotations

from fewlabel.plugins.encoders.audio_ntt import AudioNTT
from fewlabel.plugins.encoders.base import Encoder, build_encoder, checkpoint_weights, load_checkpoint_weights
from fewlabel.plugins.encoders.frontend import LogMelFrontend, RunningNorm
from fewlabel.plugins.encoders.registry import ENCODERS, create_encoder, list_encoders, register_encoder
from fewlabel.plugins.encoders.small_cnn import SmallCNN
from fewlabel.plugins.encoders.ssf import SSF_LAYER_KINDS, add_ssf, has_ssf, merge_ssf, ssf_parameters
from fewlabel.plugins.encoders.timm_encoder import TimmEncoder

__all__ = [
    "AudioNTT",
    "ENCODERS",
    "Encoder",
    "LogMelFrontend",
    "RunningNorm",
    "SSF_LAYER_KINDS",
    "SmallCNN",
    "TimmEncoder",
    "add_ssf",
    "build_encoder",
    "checkpoint_weights",
    "create_encoder",
    "has_ssf",
    "list_encoders",
    "load_checkpoint_weights",
    "merge_ssf",
    "register_encoder",
    "ssf_parameters",
]
