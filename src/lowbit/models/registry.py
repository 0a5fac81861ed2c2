"""Models by name (plain PyTorch; ``quantize()`` adds the quantization)."""

from __future__ import annotations

from typing import Any, Callable

from torch import nn

from lowbit.errors import LowbitError

ModelBuilder = Callable[..., nn.Module]
_MODELS: dict[str, ModelBuilder] = {}


def register_model(builder: ModelBuilder) -> ModelBuilder:
    """Decorator: the function's name becomes the model's name."""
    name = builder.__name__
    if name in _MODELS:
        raise ValueError(f"model {name!r} is already registered")
    _MODELS[name] = builder
    return builder


def available_models() -> list[str]:
    return sorted(_MODELS)


def build_model(name: str, **kwargs: Any) -> nn.Module:
    """``name(num_classes=..., in_channels=..., ...)``; unknown names get a clear error."""
    if name not in _MODELS:
        raise LowbitError(f"unknown model {name!r}; available: {', '.join(available_models())}")
    return _MODELS[name](**kwargs)
