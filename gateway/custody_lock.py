"""The print site's custody lock: no copy of a batch appears while ``erase`` looks for copies.

``erase`` lists every copy of a batch, records them, wipes them and checks that
none is left. A copy made meanwhile — ``open`` releasing the batch's plaintext,
a delivery renaming ``.<batch>.age.part`` to ``<batch>.age`` — would escape
both the journal and the check. So the commands that make copies and the one
that removes them share one ``flock``:

- **where**: on the spool directory itself, ``[printsite] spool``
  (:func:`custody_lock` opens it read-only and locks that descriptor). Every
  party reaches it from its configuration: ``open``, ``erase``, ``dvd-import``
  and ``pull`` at the print site, and an ASP gateway's ``file://`` destination,
  which *is* that directory. No lock file is left in the spool (its listing, the
  forwarder's and the certificate polling see only batches); the spool is
  created (0700) when missing;
- **shared** by ``open`` (from the moment its manifest is admitted, through the
  rename of the batch directory, until the opening is recorded) and by
  :meth:`gateway.spool.Spool.deliver` (the whole delivery): they add copies and
  may run side by side;
- **exclusive** by ``erase`` for its whole run: while it looks, nothing is added.

Nobody waits: a conflicting holder makes the command fail at once with exit 75
(try again), a delivery with :class:`gateway.spool.SpoolBusyError` (which the
forwarder retries). Where the filesystem cannot lock at all (some network
shares answer ``ENOLCK``), the lock is skipped; and across machines a share
passes it on only as far as its protocol does. So ``erase`` does not rely on
the lock alone: it looks for copies again after wiping, and a copy that
appeared meanwhile (or one made outside the lock, like ``pull``'s download into
``<spool>/.pull/``) stops the certificate instead of escaping it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from collections.abc import Callable, Iterator
from pathlib import Path

_UNSUPPORTED = frozenset({errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL, errno.EBADF})
"""``flock`` errors that mean the filesystem cannot lock (the lock is skipped)."""


@contextlib.contextmanager
def custody_lock(spool: Path, *, exclusive: bool, busy: Callable[[], Exception]) -> Iterator[None]:
    """Hold the custody lock (shared or exclusive) for the ``with`` block.

    Args:
        spool: ``[printsite] spool`` (created 0700 if missing).
        exclusive: True for ``erase``; False for ``open`` and deliveries.
        busy: makes the exception raised when the lock is held in a conflicting mode.

    Raises:
        Exception: ``busy()``, when another process holds the lock in a conflicting mode.
        OSError: the spool cannot be created or opened.
    """
    spool.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(spool, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)  # a trusted, configured path
    try:
        mode = fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH
        try:
            fcntl.flock(fd, mode | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise busy() from None
            if exc.errno not in _UNSUPPORTED:
                raise
        yield
    finally:
        os.close(fd)


def fsync_dir(directory: Path | int) -> None:
    """Make a directory's entries durable (best effort where fsync of a directory is refused).

    Args:
        directory: the directory, or a descriptor of it (not closed).

    Raises:
        OSError: the fsync failed for a reason other than being unsupported.
    """
    if isinstance(directory, int):
        _fsync(directory)
        return
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return  # a share that cannot open directories: the rename itself was synchronous
    try:
        _fsync(fd)
    finally:
        os.close(fd)


def _fsync(fd: int) -> None:
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
