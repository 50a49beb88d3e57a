"""Erasing a batch at the print site: find every copy, measure it, wipe it, prove it is gone.

``lgwan-gateway erase`` (:mod:`gateway.erase_cli`) runs three phases; this
module holds the file work of each, and no policy:

1. **Journal** — :func:`find_copies` lists every copy of the batch this site
   knows of and :func:`measure` takes each one's size and SHA-256 (streamed),
   *before* anything is touched; the caller records them with
   ``store.start_erasure``. A resumed erasure reuses the recorded items, so the
   certificate always carries the hashes of the data as it was.
2. **Wipe** — :func:`wipe` overwrites every regular file still present with
   zeros (``passes`` times, 1 MiB blocks, fsync after each pass), unlinks it,
   fsyncs its directory, then removes the emptied ``<work_dir>/<batch>/`` tree.
3. **Check** — :func:`remaining` names every recorded path that still exists
   (``lstat``); only an empty answer lets the caller issue a certificate.

Where copies are (each kind as the erasure certificate names it):

=============  ==================================================================
``envelope``   ``<spool>/<batch>.age``
``plaintext``  every regular file under ``<work_dir>/<batch>/`` (``open``'s output)
``staging``    ``<spool>/.pull/<batch>.age.part`` (pull), ``<spool>/.<batch>.age.part``
               and ``<spool>/<batch>.age.part`` (partial deliveries and DVD imports),
               and every other partial ``<batch>.age.part`` listed below
``quarantine`` ``<storage>/quarantine/<tenant>--…--<batch>.age``
``retained``   ``<storage>/tenants/<tenant>/inbox|outbox/<batch>.age``
=============  ==================================================================

A partial copy (``.age.part``) is ``staging`` wherever it lies: the ward checks
``envelope``, ``retained`` and ``quarantine`` items against the whole sealed
envelope, and ``staging`` items only for being no larger.

Symbolic links are never followed: every path is walked from its configured
root one component at a time with ``O_NOFOLLOW`` and directory descriptors; a
link found where a copy or a directory could be is removed as a link and is
not an item. A file with a hard link that is not itself a recorded copy is
refused untouched: overwriting it would change a file outside the batch, and
unlinking alone would leave the data under the other name. Overwriting is best
effort on SSDs and copy-on-write filesystems (the device may keep the old blocks
elsewhere), which is why plaintext is only ever written into the work directory.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from gateway.errors import GatewayError
from gateway.state import ErasureItem

KIND_ENVELOPE = "envelope"
KIND_PLAINTEXT = "plaintext"
KIND_STAGING = "staging"
KIND_QUARANTINE = "quarantine"
KIND_RETAINED = "retained"
ERASED_KINDS = (KIND_ENVELOPE, KIND_PLAINTEXT, KIND_STAGING, KIND_QUARANTINE, KIND_RETAINED)
"""The kinds of copy ``erase`` finds, in the order it wipes them (plaintext first)."""
_WIPE_ORDER = (KIND_PLAINTEXT, KIND_STAGING, KIND_QUARANTINE, KIND_RETAINED, KIND_ENVELOPE)
_RANK = {kind: rank for rank, kind in enumerate(_WIPE_ORDER)}

AGE_SUFFIX = ".age"
PART_SUFFIX = ".part"
PULL_STAGING_DIR = ".pull"
"""``gateway.pull`` downloads into ``<spool>/.pull/<batch>.age.part``."""
QUARANTINE_DIR = "quarantine"
TENANTS_DIR = "tenants"
RETAINED_AREAS = ("inbox", "outbox")
BLOCK_BYTES = 1 << 20
"""Overwrite and hash block size."""

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
_WRITE_FLAGS = os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
_ZEROS = bytes(BLOCK_BYTES)

Progress = Callable[[int], None]


def method_name(passes: int) -> str:
    """The certificate's ``method``, e.g. ``zero-overwrite-1-pass+unlink`` for one pass."""
    return f"zero-overwrite-{passes}-pass+unlink"


class ErasureError(GatewayError):
    """The batch could not be erased completely; no certificate was issued (exit 1)."""


@dataclass(frozen=True)
class Places:
    """The configured roots copies of a batch live under (trusted; everything below is not)."""

    spool: Path
    work_dir: Path
    storage: Path

    def root_of(self, path: Path) -> Path:
        """The configured root ``path`` lies under (the deepest one if roots nest).

        Raises:
            ErasureError: it lies under none (the configuration changed since it was recorded).
        """
        roots = [r for r in (self.spool, self.work_dir, self.storage) if path.is_relative_to(r)]
        if not roots:
            raise ErasureError(
                f"{path} is not under the spool, work or storage directory",
                hint="the configured directories changed since the erasure began; restore them",
            )
        return max(roots, key=lambda r: len(r.parts))


@dataclass(frozen=True)
class Copy:
    """A regular file holding (part of) the batch, found by :func:`find_copies`."""

    kind: str
    path: Path


def find_copies(batch_id: str, tenant: str, places: Places) -> list[Copy]:
    """Every regular file that is a copy of ``batch_id`` here, in wiping order.

    Args:
        batch_id: the batch (already validated: one safe name component).
        tenant: its tenant (already validated).
        places: the configured roots.

    Raises:
        ErasureError: a directory on the way is not a directory (or a link).
        OSError: a directory cannot be read.
    """
    age = batch_id + AGE_SUFFIX
    part = age + PART_SUFFIX
    candidates: list[tuple[str, Path, tuple[str, ...]]] = [
        (KIND_ENVELOPE, places.spool, (age,)),
        (KIND_STAGING, places.spool, (PULL_STAGING_DIR, part)),
        (KIND_STAGING, places.spool, ("." + part,)),
        (KIND_STAGING, places.spool, (part,)),
    ]
    for area in RETAINED_AREAS:
        candidates.append((KIND_RETAINED, places.storage, (TENANTS_DIR, tenant, area, age)))
        candidates.append((KIND_STAGING, places.storage, (TENANTS_DIR, tenant, area, part)))
    for name in _list_dir(places.storage, (QUARANTINE_DIR,)):
        if name.startswith(tenant + "--") and name.endswith("--" + age):
            candidates.append((KIND_QUARANTINE, places.storage, (QUARANTINE_DIR, name)))
        elif name.startswith(tenant + "--") and name.endswith("--" + part):
            candidates.append((KIND_STAGING, places.storage, (QUARANTINE_DIR, name)))
    found = [
        Copy(kind, root.joinpath(*parts))
        for kind, root, parts in candidates
        if _is_regular(root, parts)
    ]
    found.extend(
        Copy(KIND_PLAINTEXT, places.work_dir.joinpath(*parts))
        for parts in _regular_files_below(places.work_dir, (batch_id,))
    )
    found.sort(key=lambda c: (_RANK[c.kind], str(c.path)))
    return found


def measure(
    copies: list[Copy], places: Places, progress: Progress | None = None
) -> list[ErasureItem]:
    """Size and SHA-256 of every copy, streamed, never through a link.

    A copy that vanished since :func:`find_copies` is left out.

    Raises:
        ErasureError: a path is outside its root, or not a regular file any more.
        OSError: a copy cannot be read.
    """
    items: list[ErasureItem] = []
    for found in copies:
        root = places.root_of(found.path)
        parts = _parts(found.path, root)
        with _parent(root, parts[:-1]) as dir_fd:
            if dir_fd is None:
                continue
            try:
                fd = os.open(parts[-1], _READ_FLAGS, dir_fd=dir_fd)
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise _os_error(found.path, "cannot be read", exc) from None
            try:
                size, digest = _hash_fd(fd, found.path, progress)
            finally:
                os.close(fd)
        items.append(ErasureItem(found.kind, str(found.path), size, digest))
    return items


def wipe(
    items: tuple[ErasureItem, ...],
    batch_id: str,
    places: Places,
    *,
    passes: int,
    progress: Progress | None = None,
) -> None:
    """Overwrite and unlink every recorded item still present, then remove the work tree.

    Args:
        items: the recorded items (their hashes were taken before).
        batch_id: the batch; ``<work_dir>/<batch_id>/`` is removed once emptied.
        places: the configured roots.
        passes: how many times each regular file is overwritten with zeros.
        progress: called with the bytes overwritten.

    Raises:
        ErasureError: something could not be overwritten or removed, or a file
            has a hard link that is not a recorded copy (overwriting it would
            change a file outside the batch; unlinking alone would leave the
            data there). What was removed stays removed; the next run continues.
    """
    located = [(item, places.root_of(Path(item.path))) for item in items]
    wiper = _Wiper(passes, progress)
    for item, root in located:
        wiper.count_links(root, _parts(Path(item.path), root))
    for item, root in sorted(located, key=lambda pair: _RANK.get(pair[0].kind, 0)):
        parts = _parts(Path(item.path), root)
        with _parent(root, parts[:-1]) as dir_fd:
            if dir_fd is not None:
                wiper.wipe_entry(dir_fd, parts[-1], Path(item.path))
    wiper.remove_tree(places.work_dir, batch_id)


def remaining(items: tuple[ErasureItem, ...], batch_id: str, places: Places) -> list[str]:
    """Every recorded path (and the batch's work directory) that still exists (``lstat``)."""
    paths = [item.path for item in items] + [str(places.work_dir / batch_id)]
    return [path for path in paths if _exists(path)]


def unrecorded(copies: list[Copy], items: tuple[ErasureItem, ...]) -> list[Copy]:
    """Copies found now that the journal does not list (they appeared after it was written)."""
    known = {item.path for item in items}
    return [found for found in copies if str(found.path) not in known]


# -- walking without following links ----------------------------------------------------------


def _parts(path: Path, root: Path) -> tuple[str, ...]:
    """``path``'s components below ``root`` (one file at least, no ``..``)."""
    parts = path.relative_to(root).parts
    if not parts or any(p in ("", ".", "..") for p in parts):
        raise ErasureError(f"{path} is not a file below {root}")
    return parts


@contextlib.contextmanager
def _parent(root: Path, dirs: tuple[str, ...]) -> Iterator[int | None]:
    """A descriptor of ``root/dirs…`` walked with ``O_NOFOLLOW``; None if a part is missing.

    A symbolic link on the way is removed (it is not ours to follow) and counts
    as missing.
    """
    try:
        fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        yield None
        return
    try:
        for name in dirs:
            try:
                child = os.open(name, _DIR_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                yield None
                return
            except OSError as exc:
                if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                    raise
                _unlink_link(fd, name)
                yield None
                return
            os.close(fd)
            fd = child
        yield fd
    finally:
        os.close(fd)


def _unlink_link(dir_fd: int, name: str) -> None:
    """Remove ``name`` if it is a symbolic link (never what it points to)."""
    with contextlib.suppress(FileNotFoundError):
        if stat.S_ISLNK(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode):
            os.unlink(name, dir_fd=dir_fd)
            _fsync_dir(dir_fd)


def _is_regular(root: Path, parts: tuple[str, ...]) -> bool:
    with _parent(root, parts[:-1]) as dir_fd:
        if dir_fd is None:
            return False
        try:
            info = os.stat(parts[-1], dir_fd=dir_fd, follow_symlinks=False)
        except (FileNotFoundError, NotADirectoryError):
            return False
        return stat.S_ISREG(info.st_mode)


def _list_dir(root: Path, dirs: tuple[str, ...]) -> list[str]:
    with _parent(root, dirs) as dir_fd:
        if dir_fd is None:
            return []
        return sorted(entry.name for entry in os.scandir(dir_fd))


def _regular_files_below(root: Path, top: tuple[str, ...]) -> list[tuple[str, ...]]:
    """Relative paths of the regular files in the tree ``root/top…`` (links not followed)."""
    found: list[tuple[str, ...]] = []
    with _parent(root, top) as dir_fd:
        if dir_fd is None:
            return found
        for entry in sorted(os.scandir(dir_fd), key=lambda e: e.name):
            if entry.is_dir(follow_symlinks=False):
                found.extend(_regular_files_below(root, (*top, entry.name)))
            elif entry.is_file(follow_symlinks=False):
                found.append((*top, entry.name))
    return found


def _exists(path: str) -> bool:
    try:
        os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return False
    return True


# -- hashing and wiping -----------------------------------------------------------------------


def _hash_fd(fd: int, path: Path, progress: Progress | None) -> tuple[int, str]:
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        raise ErasureError(f"{path} is not a regular file any more", hint="run erase again")
    digest = hashlib.sha256()
    size = 0
    while block := os.read(fd, BLOCK_BYTES):
        digest.update(block)
        size += len(block)
        if progress is not None:
            progress(len(block))
    return size, digest.hexdigest()


class _Wiper:
    """Overwrites and removes files, knowing how many recorded paths name each inode."""

    def __init__(self, passes: int, progress: Progress | None) -> None:
        self._passes = passes
        self._progress = progress
        self._names: dict[tuple[int, int], int] = {}

    def count_links(self, root: Path, parts: tuple[str, ...]) -> None:
        """Count a recorded path's inode (once per path still present)."""
        with _parent(root, parts[:-1]) as dir_fd:
            if dir_fd is None:
                return
            try:
                info = os.stat(parts[-1], dir_fd=dir_fd, follow_symlinks=False)
            except (FileNotFoundError, NotADirectoryError):
                return
            if stat.S_ISREG(info.st_mode):
                inode = (info.st_dev, info.st_ino)
                self._names[inode] = self._names.get(inode, 0) + 1

    def wipe_entry(self, dir_fd: int, name: str, path: Path) -> None:
        """Overwrite ``name`` (a regular file) ``passes`` times, then unlink it; links just go."""
        try:
            info = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            return
        if stat.S_ISDIR(info.st_mode):
            raise ErasureError(f"{path} is a directory now, not the file that was recorded")
        inode = (info.st_dev, info.st_ino)
        if stat.S_ISREG(info.st_mode):
            if info.st_nlink > self._names.get(inode, 1):
                raise ErasureError(
                    f"{path} has {info.st_nlink} hard links, not all of them copies of this"
                    " batch; nothing of it was overwritten and no certificate was issued",
                    hint="find the other names (find -samefile) and remove or move them,"
                    " then run erase again",
                )
            try:
                self._overwrite(dir_fd, name, info)
            except OSError as exc:
                raise _os_error(path, "cannot be overwritten", exc) from None
        try:
            os.unlink(name, dir_fd=dir_fd)
            _fsync_dir(dir_fd)
        except FileNotFoundError:
            return
        except OSError as exc:
            raise _os_error(path, "cannot be removed", exc) from None
        if inode in self._names:
            self._names[inode] -= 1

    def _overwrite(self, dir_fd: int, name: str, info: os.stat_result) -> None:
        """Zero the file in place (its own blocks), fsync after each pass."""
        if not info.st_mode & stat.S_IWUSR:
            reader = os.open(name, _READ_FLAGS, dir_fd=dir_fd)
            try:
                if _same(os.fstat(reader), info):
                    os.fchmod(reader, stat.S_IMODE(info.st_mode) | stat.S_IWUSR)
            finally:
                os.close(reader)
        fd = os.open(name, _WRITE_FLAGS, dir_fd=dir_fd)
        try:
            mine = os.fstat(fd)
            if not stat.S_ISREG(mine.st_mode) or not _same(mine, info):
                raise OSError(errno.ESTALE, "the file was replaced while it was being erased")
            size = mine.st_size
            for _pass in range(self._passes):
                offset = 0
                while offset < size:
                    written = os.pwrite(fd, _ZEROS[: min(BLOCK_BYTES, size - offset)], offset)
                    offset += written
                    if self._progress is not None:
                        self._progress(written)
                os.fsync(fd)
        finally:
            os.close(fd)

    def remove_tree(self, root: Path, batch_id: str) -> None:
        """Remove ``root/<batch_id>`` and everything in it, links as links; wipe stray files."""
        with _parent(root, ()) as root_fd:
            if root_fd is None:
                return
            try:
                info = os.stat(batch_id, dir_fd=root_fd, follow_symlinks=False)
            except FileNotFoundError:
                return
            if not stat.S_ISDIR(info.st_mode):
                self.wipe_entry(root_fd, batch_id, root / batch_id)
                return
            self._empty_dir(root_fd, batch_id, root / batch_id)
            try:
                os.rmdir(batch_id, dir_fd=root_fd)
            except OSError as exc:
                raise _os_error(root / batch_id, "cannot be removed", exc) from None
            _fsync_dir(root_fd)

    def _empty_dir(self, parent_fd: int, name: str, path: Path) -> None:
        try:
            fd = os.open(name, _DIR_FLAGS, dir_fd=parent_fd)
        except OSError as exc:
            raise _os_error(path, "cannot be opened", exc) from None
        try:
            for entry in sorted(os.scandir(fd), key=lambda e: e.name):
                if entry.is_dir(follow_symlinks=False):
                    self._empty_dir(fd, entry.name, path / entry.name)
                    try:
                        os.rmdir(entry.name, dir_fd=fd)
                    except OSError as exc:
                        raise _os_error(path / entry.name, "cannot be removed", exc) from None
                else:
                    self.wipe_entry(fd, entry.name, path / entry.name)
            _fsync_dir(fd)
        finally:
            os.close(fd)


def _same(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _fsync_dir(fd: int) -> None:
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise


def _os_error(path: Path, what: str, exc: OSError) -> ErasureError:
    reason = exc.strerror or errno.errorcode.get(exc.errno or 0, "I/O error")
    return ErasureError(
        f"{path} {what}: {reason}; the erasure is not finished and no certificate was issued",
        hint="fix the cause (permissions, immutable flag, mount), then run erase again",
    )
