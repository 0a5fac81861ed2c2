"""Models by name (plain PyTorch; ``quantize()`` adds the quantization)."""

from __future__ import annotations

import inspect
from typing import Any, Callable

from torch import nn

from lowbit.errors import LowbitError

ModelBuilder = Callable[..., nn.Module]
_MODELS: dict[str, ModelBuilder] = {}

_KEYWORD_KINDS = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
# Options declared as one of these types are checked before building: a recipe's
# ``width: eight`` otherwise fails deep inside torch with a message about something else.
_CHECKED_TYPES: dict[str, tuple[type, ...]] = {
    "int": (int,), "float": (int, float), "str": (str,), "bool": (bool,),
}


def register_model(builder: ModelBuilder) -> ModelBuilder:
    """Decorator: the function's name becomes the model's name, its keyword parameters the
    model's options (lowbit passes ``num_classes`` and ``in_channels`` to every model)."""
    name = builder.__name__
    if name in _MODELS:
        raise ValueError(f"model {name!r} is already registered")
    _MODELS[name] = builder
    return builder


def available_models() -> list[str]:
    return sorted(_MODELS)


def build_model(name: str, **options: Any) -> nn.Module:
    """``name(num_classes=..., in_channels=..., ...)``; an unknown name, an option the model
    does not have, or an option of the wrong type is a one-line ``LowbitError``."""
    if name not in _MODELS:
        raise LowbitError(f"unknown model {name!r}; available: {', '.join(available_models())}")
    builder = _MODELS[name]
    _check_options(name, inspect.signature(builder), options)
    try:
        return builder(**options)
    except (TypeError, ValueError, RuntimeError) as error:  # e.g. torch on a negative width
        given = ", ".join(f"{key}={value!r}" for key, value in options.items())
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise LowbitError(f"cannot build model {name}({given}): {reason}") from None


def _check_options(name: str, signature: inspect.Signature, options: dict[str, Any]) -> None:
    parameters = signature.parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return  # the builder takes any option and checks them itself
    accepted = [key for key, p in parameters.items() if p.kind in _KEYWORD_KINDS]
    unknown = [key for key in options if key not in accepted]
    if unknown:
        plural = "s" if len(unknown) > 1 else ""
        raise LowbitError(
            f"model {name} has no option{plural} {', '.join(map(repr, unknown))}; "
            f"its options: {', '.join(accepted) or 'none'}"
        )
    for key, value in options.items():
        annotation = parameters[key].annotation
        type_name = getattr(annotation, "__name__", annotation)  # a string under PEP 563
        if isinstance(type_name, str) and not _has_type(value, type_name):
            raise LowbitError(f"model {name} option {key} must be {type_name}, got {value!r}")


def _has_type(value: Any, type_name: str) -> bool:
    allowed = _CHECKED_TYPES.get(type_name)
    # bool is an int to isinstance, but width=True is a mistake
    return allowed is None or isinstance(value, allowed) and (
        type(value) is not bool or bool in allowed
    )
