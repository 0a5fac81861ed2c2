"""lowbit: quantization-aware training of low-bit neural networks in PyTorch."""

from lowbit.errors import LowbitError
from lowbit.nn import QConv2d, QLinear, quantize
from lowbit.quant.init import optimal_step_size
from lowbit.quant.levels import levels
from lowbit.quant.project import project_to_levels
from lowbit.quant.registry import available_methods, get_method, register_method
from lowbit.train.user_loop import hooks, param_groups

__version__ = "0.1.0"

__all__ = [
    "LowbitError",
    "QConv2d",
    "QLinear",
    "available_methods",
    "get_method",
    "hooks",
    "levels",
    "optimal_step_size",
    "param_groups",
    "project_to_levels",
    "quantize",
    "register_method",
]
