"""Scalars to a CSV file always, and to TensorBoard when it is installed (main process only)."""
from __future__ import annotations

import csv
import importlib.util
import logging
import time
from pathlib import Path
from typing import Mapping, Optional

logger = logging.getLogger(__name__)


class ScalarLog:
    """Appends ``step,name,value`` rows to ``scalars.csv`` (long format: new metrics need no new columns)."""

    def __init__(self, output_dir: str | Path, tensorboard: bool = True):
        self.path = Path(output_dir) / "scalars.csv"
        new_file = not self.path.exists()
        self._file = open(self.path, "a", newline="", encoding="utf-8")
        self._csv = csv.writer(self._file)
        if new_file:
            self._csv.writerow(["step", "name", "value", "time"])
        self._tensorboard = None
        if tensorboard and importlib.util.find_spec("tensorboard") is not None:
            from torch.utils.tensorboard import SummaryWriter
            self._tensorboard = SummaryWriter(str(Path(output_dir) / "tensorboard"))
        elif tensorboard:
            logger.info("TensorBoard is not installed: scalars go to %s only", self.path)

    def log(self, step: int, scalars: Mapping[str, float]) -> None:
        now = time.time()
        for name, value in scalars.items():
            self._csv.writerow([step, name, f"{float(value):.6g}", f"{now:.1f}"])
            if self._tensorboard is not None:
                self._tensorboard.add_scalar(name, float(value), step)
        self._file.flush()

    def close(self) -> None:
        self._file.close()
        if self._tensorboard is not None:
            self._tensorboard.close()


def read_scalars(path: str | Path, name: Optional[str] = None) -> list[tuple[int, str, float]]:
    """Rows of a ``scalars.csv`` (optionally of one name), for tests and quick plots."""
    with open(path, newline="", encoding="utf-8") as f:
        rows = [(int(r["step"]), r["name"], float(r["value"])) for r in csv.DictReader(f)]
    return [r for r in rows if name is None or r[1] == name]
