"""Progress of a training or evaluation pass, readable on a terminal and in a log file.

On a terminal: a bar with the running loss, lr and images/s. Anywhere else (a file, a pipe,
a job scheduler's log): one ``lowbit`` logger line at INFO every ``interval`` seconds with
the same fields, so a long epoch never goes silent. Both are off when the ``lowbit`` logger
is above INFO (``lowbit train --quiet``).
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from tqdm import tqdm

logger = logging.getLogger("lowbit")

# Seconds between two refreshes of the bar's numbers; each refresh reads the running loss
# from the device, so this bounds how often the loop waits on it.
BAR_REFRESH_SECONDS = 1.0
# Seconds between two log lines off a terminal (``progress_seconds`` in the run config).
LOG_INTERVAL_SECONDS = 10.0


def on_terminal() -> bool:
    return sys.stderr.isatty()


class Progress:
    """Wraps the batches of one pass; ``update`` after each step reports when it is time.

    The running sums stay on the device; they are read (one synchronization) only when a
    report is due, never every step.
    """

    def __init__(
        self,
        batches: Iterable[Any],
        desc: str,
        total: int,
        enabled: bool = True,
        interval: float = LOG_INTERVAL_SECONDS,
    ) -> None:
        self.desc, self.total = desc, total
        self.enabled = enabled and logger.isEnabledFor(logging.INFO)
        self.bar = None
        if self.enabled and on_terminal():
            self.bar = tqdm(batches, desc=desc, total=total, leave=False, dynamic_ncols=True)
        self.batches = self.bar if self.bar is not None else batches
        self.interval = BAR_REFRESH_SECONDS if self.bar is not None else interval
        self.start = self.last = time.monotonic()
        self.last_seen = 0

    def __iter__(self) -> Iterator[Any]:
        try:
            yield from self.batches
        finally:
            if self.bar is not None:
                self.bar.close()

    def update(
        self, step: int, seen: int, loss_sum: torch.Tensor | float | None = None,
        lr: float | None = None,
    ) -> None:
        """After step ``step`` (0-based), with ``seen`` samples so far and their summed loss."""
        if not self.enabled:
            return
        now = time.monotonic()
        if now - self.last < self.interval:
            return
        rate = (seen - self.last_seen) / max(now - self.last, 1e-9)
        self.last, self.last_seen = now, seen
        fields = {}
        if loss_sum is not None:
            fields["loss"] = f"{float(loss_sum) / max(seen, 1):.4f}"
        if lr is not None:
            fields["lr"] = f"{lr:.4g}"
        fields["images/s"] = f"{rate:.0f}"
        if self.bar is not None:
            self.bar.set_postfix(fields, refresh=False)
        else:
            text = "  ".join(f"{key} {value}" for key, value in fields.items())
            logger.info("%s  step %d/%d  %s", self.desc, step + 1, self.total, text)
