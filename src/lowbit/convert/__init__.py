"""Importers: checkpoints made by other code, rewritten as lowbit checkpoints."""

from lowbit.convert.apot_official import import_apot_official

__all__ = ["import_apot_official"]
