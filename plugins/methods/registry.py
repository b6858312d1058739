"""The method registry, so that a config can name the teacher's method (``--teacher.method byol``)."""

from __future__ import annotations

import lightning as L

from fewlabel.plugins.registry import Registry

METHODS: Registry[L.LightningModule] = Registry("method")

#: Decorator that registers a method class: ``@register_method("simclr")``.
register_method = METHODS.register
