"""File mechanics of erasing (:mod:`gateway.erasure`): walking without links, hashing, wiping.

Every path is walked from a trusted, configured root one component at a time
with ``O_NOFOLLOW`` and directory descriptors. A symbolic link met on the way,
or where a copy could be, raises :class:`ErasureError` (it is neither followed
nor removed: the copy it stands for may be wherever it points). :class:`Wiper`
overwrites a regular file in place with zeros (``passes`` times, 1 MiB blocks,
fsync after each pass) before unlinking it and fsyncing its directory.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

from gateway.custody_lock import fsync_dir
from gateway.errors import GatewayError
from gateway.i18n import _

BLOCK_BYTES = 1 << 20
"""Overwrite and hash block size."""

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
_WRITE_FLAGS = os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
_ZEROS = bytes(BLOCK_BYTES)

Progress = Callable[[int], None]


class ErasureError(GatewayError):
    """The batch could not be erased completely; no certificate was issued (exit 1)."""


# -- walking without following links ----------------------------------------------------------


def parts_below(path: Path, root: Path) -> tuple[str, ...]:
    """``path``'s components below ``root`` (one file at least, no ``..``)."""
    parts = path.relative_to(root).parts
    if not parts or any(p in ("", ".", "..") for p in parts):
        raise ErasureError(_("{path} is not a file below {root}").format(path=path, root=root))
    return parts


@contextlib.contextmanager
def parent_fd(root: Path, dirs: tuple[str, ...]) -> Iterator[int | None]:
    """A descriptor of ``root/dirs…`` walked with ``O_NOFOLLOW``; None if a part is missing.

    Raises:
        ErasureError: a part is a symbolic link (never followed, never dropped).
    """
    try:
        fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        yield None
        return
    try:
        walked = root
        for name in dirs:
            walked = walked / name
            try:
                child = os.open(name, _DIR_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                yield None
                return
            except OSError as exc:
                if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                    raise
                if _is_link(fd, name):
                    raise link_error(walked) from None
                yield None  # a file where a directory would be: no copy below it
                return
            os.close(fd)
            fd = child
        yield fd
    finally:
        os.close(fd)


def _is_link(dir_fd: int, name: str) -> bool:
    try:
        return stat.S_ISLNK(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)
    except FileNotFoundError:
        return False


def link_error(path: Path) -> ErasureError:
    return ErasureError(
        _(
            "{path} is a symbolic link; refusing to erase through it (copies may be where it"
            " points); no certificate was issued"
        ).format(path=path),
        hint=_(
            "find out where it points and deal with the copies there; replace the link with"
            " the real directory or remove it, then run erase again"
        ),
    )


def is_regular(root: Path, parts: tuple[str, ...]) -> bool:
    with parent_fd(root, parts[:-1]) as dir_fd:
        if dir_fd is None:
            return False
        try:
            info = os.stat(parts[-1], dir_fd=dir_fd, follow_symlinks=False)
        except (FileNotFoundError, NotADirectoryError):
            return False
        if stat.S_ISLNK(info.st_mode):
            raise link_error(root.joinpath(*parts))
        return stat.S_ISREG(info.st_mode)


def list_dir(root: Path, dirs: tuple[str, ...]) -> list[str]:
    with parent_fd(root, dirs) as dir_fd:
        if dir_fd is None:
            return []
        return sorted(entry.name for entry in os.scandir(dir_fd))


def regular_files_below(root: Path, top: tuple[str, ...]) -> list[tuple[str, ...]]:
    """Relative paths of the regular files in the tree ``root/top…``.

    Raises:
        ErasureError: a symbolic link in the tree (or the tree itself one).
    """
    found: list[tuple[str, ...]] = []
    with parent_fd(root, top) as dir_fd:
        if dir_fd is None:
            return found
        for entry in sorted(os.scandir(dir_fd), key=lambda e: e.name):
            if entry.is_symlink():
                raise link_error(root.joinpath(*top, entry.name))
            if entry.is_dir(follow_symlinks=False):
                found.extend(regular_files_below(root, (*top, entry.name)))
            elif entry.is_file(follow_symlinks=False):
                found.append((*top, entry.name))
    return found


def exists(path: str) -> bool:
    try:
        os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return False
    return True


# -- hashing and wiping -----------------------------------------------------------------------


def hash_fd(fd: int, path: Path, progress: Progress | None) -> tuple[int, str]:
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        raise ErasureError(
            _("{path} is not a regular file any more").format(path=path),
            hint=_("run erase again"),
        )
    digest = hashlib.sha256()
    size = 0
    while block := os.read(fd, BLOCK_BYTES):
        digest.update(block)
        size += len(block)
        if progress is not None:
            progress(len(block))
    return size, digest.hexdigest()


class Wiper:
    """Overwrites and removes files, knowing how many recorded paths name each inode.

    ``own``: the files are plaintext this process wrote (:func:`shred_tree`):
    links go as links and other hard links do not stop the overwrite.
    """

    def __init__(self, passes: int, progress: Progress | None, *, own: bool = False) -> None:
        self._passes = passes
        self._progress = progress
        self._own = own
        self._names: dict[tuple[int, int], int] = {}

    def count_links(self, root: Path, parts: tuple[str, ...]) -> None:
        """Count a recorded path's inode (once per path still present)."""
        with parent_fd(root, parts[:-1]) as dir_fd:
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
        """Overwrite ``name`` (a regular file) ``passes`` times, then unlink it.

        Raises:
            ErasureError: it is a directory, a symbolic link (unless ``own``), has
                other hard links (unless ``own``), or cannot be overwritten or removed.
        """
        try:
            info = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            return
        if stat.S_ISDIR(info.st_mode):
            raise ErasureError(
                _("{path} is a directory now, not the file that was recorded").format(path=path)
            )
        if stat.S_ISLNK(info.st_mode) and not self._own:
            raise link_error(path)
        inode = (info.st_dev, info.st_ino)
        if stat.S_ISREG(info.st_mode):
            if not self._own and info.st_nlink > self._names.get(inode, 1):
                raise ErasureError(
                    _(
                        "{path} has {links} hard links, not all of them copies of this"
                        " batch; nothing of it was overwritten and no certificate was issued"
                    ).format(path=path, links=info.st_nlink),
                    hint=_(
                        "find the other names (find -samefile) and remove or move them,"
                        " then run erase again"
                    ),
                )
            try:
                self._overwrite(dir_fd, name, info)
            except OSError as exc:
                raise os_error(_("{path} cannot be overwritten").format(path=path), exc) from None
        try:
            os.unlink(name, dir_fd=dir_fd)
            fsync_dir(dir_fd)
        except FileNotFoundError:
            return
        except OSError as exc:
            raise os_error(_("{path} cannot be removed").format(path=path), exc) from None
        if inode in self._names:
            self._names[inode] -= 1

    def _overwrite(self, dir_fd: int, name: str, info: os.stat_result) -> None:
        """Zero the file in place (its own blocks), fsync after each pass."""
        if not info.st_mode & stat.S_IWUSR:
            reader = os.open(name, READ_FLAGS, dir_fd=dir_fd)
            try:
                if _same(os.fstat(reader), info):
                    os.fchmod(reader, stat.S_IMODE(info.st_mode) | stat.S_IWUSR)
            finally:
                os.close(reader)
        fd = os.open(name, _WRITE_FLAGS, dir_fd=dir_fd)
        try:
            mine = os.fstat(fd)
            if not stat.S_ISREG(mine.st_mode) or not _same(mine, info):
                raise OSError(errno.ESTALE, _("the file was replaced while it was being erased"))
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
        """Remove ``root/<batch_id>`` and everything in it; wipe stray files too."""
        with parent_fd(root, ()) as root_fd:
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
                problem = _("{path} cannot be removed").format(path=root / batch_id)
                raise os_error(problem, exc) from None
            fsync_dir(root_fd)

    def _empty_dir(self, parent_fd: int, name: str, path: Path) -> None:
        try:
            fd = os.open(name, _DIR_FLAGS, dir_fd=parent_fd)
        except OSError as exc:
            raise os_error(_("{path} cannot be opened").format(path=path), exc) from None
        try:
            for entry in sorted(os.scandir(fd), key=lambda e: e.name):
                if entry.is_dir(follow_symlinks=False):
                    self._empty_dir(fd, entry.name, path / entry.name)
                    try:
                        os.rmdir(entry.name, dir_fd=fd)
                    except OSError as exc:
                        problem = _("{path} cannot be removed").format(path=path / entry.name)
                        raise os_error(problem, exc) from None
                else:
                    self.wipe_entry(fd, entry.name, path / entry.name)
            fsync_dir(fd)
        finally:
            os.close(fd)


def _same(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def os_error(problem: str, exc: OSError) -> ErasureError:
    """``problem`` (e.g. "PATH cannot be removed", translated) with the OS's reason."""
    reason = exc.strerror or errno.errorcode.get(exc.errno or 0, "I/O error")
    return ErasureError(
        _("{problem}: {reason}; the erasure is not finished and no certificate was issued").format(
            problem=problem, reason=reason
        ),
        hint=_("fix the cause (permissions, immutable flag, mount), then run erase again"),
    )
