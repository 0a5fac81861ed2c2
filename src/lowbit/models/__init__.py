"""Model zoo: plain PyTorch models registered by name."""

from lowbit.models import small_cnn  # noqa: F401  (registers)
from lowbit.models.registry import available_models, build_model, register_model

__all__ = ["available_models", "build_model", "register_model"]
