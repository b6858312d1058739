"""fewlabel.callbacks: Lightning callbacks that compose with any fewlabel module through its contracts."""

from __future__ import annotations

from fewlabel.callbacks.pseudo_labeler import PseudoLabeler

__all__ = ["PseudoLabeler"]
