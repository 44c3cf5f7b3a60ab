"""One process per data directory: an flock that two servers (or a server and an offline
tool) cannot both hold. The kernel drops it when the process dies, even by kill -9."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path


class ExclusiveUse:
    """`with ExclusiveUse(dir, "x.lock"):` holds the lock; BlockingIOError if it is taken."""

    def __init__(self, data_dir: Path, name: str) -> None:
        self.path = Path(data_dir) / name
        self._fd: int | None = None

    def __enter__(self) -> ExclusiveUse:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise
        self._fd = fd
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
