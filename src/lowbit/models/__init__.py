"""Model zoo: plain PyTorch models registered by name."""

from lowbit.models import (  # noqa: F401  (registers)
    lenet_vgg,
    mobilenetv2,
    preact_resnet,
    resnet_cifar,
    resnet_imagenet,
    small_cnn,
)
from lowbit.models.registry import available_models, build_model, register_model

__all__ = ["available_models", "build_model", "register_model"]
