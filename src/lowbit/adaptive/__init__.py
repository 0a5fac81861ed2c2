"""Several bit-widths in one network (CoQuant): switchable layers, joint training with teacher
selection and block swapping, BatchNorm calibration, evaluation at any bit-width."""

from lowbit.adaptive.calibration import recalibrate_batchnorm
from lowbit.adaptive.joint import JointObjective, distillation_loss, joint_loss
from lowbit.adaptive.settings import AdaptiveSettings, adaptive_settings
from lowbit.adaptive.switchable import (
    SwitchableBatchNorm,
    make_adaptive,
    model_bit_widths,
    set_bits,
)

__all__ = [
    "AdaptiveSettings",
    "JointObjective",
    "SwitchableBatchNorm",
    "adaptive_settings",
    "distillation_loss",
    "joint_loss",
    "make_adaptive",
    "model_bit_widths",
    "recalibrate_batchnorm",
    "set_bits",
]
