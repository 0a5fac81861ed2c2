"""The run's records as TensorBoard scalars, when the ``tensorboard`` package is installed
(``pip install 'lowbit[tensorboard]'``; nothing else needs it).

Each stage writes its own directory, ``RUN/tensorboard/<stage>/``, with the step counted over
the stage: epoch records under ``epoch/…`` at the step that ends the epoch, sampled steps
under ``step/loss``, ``step/lr`` and ``<quantizer>/<statistic>`` (a vector as
``<statistic>/<i>``). A resumed stage opens its writer with ``purge_step`` at the step it
resumes from, so TensorBoard drops what the interrupted process wrote after that point.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

# Numbers of an epoch record that are curves (not counts or times).
EPOCH_CURVES = (
    "lr", "train_loss", "train_top1", "val_top1", "val_top5", "val_loss", "top1", "top5", "loss",
)
# Statistics that are not curves over training.
NOT_CURVES = ("histogram", "histogram_range")


class TensorBoardLog:
    """One stage's TensorBoard writer."""

    def __init__(self, writer: Any) -> None:
        self.writer = writer

    @classmethod
    def open(cls, run_dir: Path, stage: str, purge_step: int) -> TensorBoardLog | None:
        """A writer for ``stage`` in ``run_dir``; ``None`` without the tensorboard package."""
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # torch raises it when the tensorboard package is missing
            return None
        return cls(SummaryWriter(str(run_dir / "tensorboard" / stage), purge_step=purge_step))

    def write(self, record: dict[str, Any]) -> None:
        """Add ``record`` (a ``metrics.jsonl`` record) as scalars."""
        step = record["step"]
        if record.get("kind") == "step":
            self.writer.add_scalar("step/loss", record["loss"], step)
            self.writer.add_scalar("step/lr", record["lr"], step)
            for name, stats in record["quantizers"].items():
                for key, value in stats.items():
                    if key in NOT_CURVES:
                        continue
                    if isinstance(value, list):
                        for i, item in enumerate(value):
                            self.writer.add_scalar(f"{name}/{key}/{i}", item, step)
                    else:
                        self.writer.add_scalar(f"{name}/{key}", value, step)
        else:
            for key in EPOCH_CURVES:
                if isinstance(record.get(key), (int, float)):
                    self.writer.add_scalar(f"epoch/{key}", record[key], step)

    def close(self) -> None:
        self.writer.close()
