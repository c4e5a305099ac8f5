"""Writing files so that a reader never sees half of one.

Run folders (:mod:`freezelab.run.record`) and reports (:mod:`freezelab.report.render`) are read
while they are being written: a resume trusts a checkpoint, the runner trusts ``summary.json``,
a person opens the report. Every file is therefore written to a temporary name in the same
folder and renamed into place, which is atomic on POSIX and Windows.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

__all__ = ["atomic_write"]


def atomic_write(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so readers see either the old file or the whole new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
