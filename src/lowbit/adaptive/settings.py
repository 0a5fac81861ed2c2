"""The ``adaptive`` config section, checked once: what joint training over a bit-width set does.

``bits: null`` (the default) is single-precision training; a list such as ``[8, 6, 4, 2]``
trains one network for every bit-width in it (CoQuant Algorithm 1).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from lowbit.errors import LowbitError, is_number
from lowbit.quant.bit_widths import check_bit_widths

# "dynamic": CoQuant's teacher selection (Eq. 4, see teacher.py); "highest": AdaBits-style
# distillation from b1; "next": the next-higher bit-width (Any-Precision); "none": switchable
# BatchNorm only, labels alone.
TEACHERS = ("dynamic", "highest", "next", "none")
# How far a teacher is from its student in the selection score (teacher.py).
DISTANCES = ("weights", "bits")
# How the probability of keeping a student block varies over depth (swap.py).
SWAP_SCHEDULES = ("linear", "flat")


@dataclass(frozen=True)
class AdaptiveSettings:
    """Checked settings of joint training; ``bits`` is sorted from the highest down (b1 first)."""

    bits: tuple[int, ...]
    teacher: str = "dynamic"
    swap: bool = True
    p1: float = 0.9
    lam: float = 0.001
    distance: str = "weights"
    swap_schedule: str = "linear"
    block_depth: int = 2
    bn_calibration_batches: int = 20

    def __post_init__(self) -> None:
        object.__setattr__(self, "bits", check_bit_widths(self.bits))
        _choice("teacher", self.teacher, TEACHERS)
        _choice("distance", self.distance, DISTANCES)
        _choice("swap_schedule", self.swap_schedule, SWAP_SCHEDULES)
        if not isinstance(self.swap, bool):
            raise LowbitError(f"adaptive.swap must be true or false, got {self.swap!r}")
        if self.swap and self.teacher == "none":
            raise LowbitError(
                "adaptive.swap needs a teacher to swap blocks with; set adaptive.swap=false or "
                "adaptive.teacher to dynamic, highest or next"
            )
        if not is_number(self.p1) or not 0 <= self.p1 <= 1:
            raise LowbitError(f"adaptive.p1 must be a probability in [0, 1], got {self.p1!r}")
        if not is_number(self.lam) or self.lam < 0:
            raise LowbitError(f"adaptive.lambda must be a number >= 0, got {self.lam!r}")
        _whole("block_depth", self.block_depth, 1)
        _whole("bn_calibration_batches", self.bn_calibration_batches, 0)

    @classmethod
    def from_config(cls, section: Mapping[str, Any]) -> AdaptiveSettings:
        """From the config's ``adaptive`` mapping (``lambda`` is a Python keyword: ``lam`` here)."""
        if section.get("bits") is None:
            raise LowbitError("adaptive.bits is null: this run trains one bit-width")
        options = {key: value for key, value in section.items() if key != "lambda"}
        return cls(**options, lam=section.get("lambda", cls.lam))


def adaptive_settings(config: Mapping[str, Any]) -> AdaptiveSettings | None:
    """The run's settings, or ``None`` for single-precision training (configs written before the
    ``adaptive`` section existed included)."""
    section = config.get("adaptive") or {}
    return None if section.get("bits") is None else AdaptiveSettings.from_config(section)


def _choice(key: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise LowbitError(f"adaptive.{key} must be one of {', '.join(choices)}, got {value!r}")


def _whole(key: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise LowbitError(f"adaptive.{key} must be a whole number >= {minimum}, got {value!r}")
