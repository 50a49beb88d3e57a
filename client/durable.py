"""Making the ward's files durable: what seal, dvd and the certificate copies share."""

import os
from pathlib import Path


def fsync_dir(directory: Path) -> None:
    """fsync ``directory`` so the names just created or renamed in it survive a power cut."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
