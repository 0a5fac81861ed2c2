"""Importers: checkpoints made by other code, rewritten as lowbit checkpoints."""

from lowbit.convert.apot_official import import_apot_official
from lowbit.convert.pytorchcv import import_pytorchcv_preresnet

__all__ = ["import_apot_official", "import_pytorchcv_preresnet"]
