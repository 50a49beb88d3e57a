"""DVD images: ISO 9660 + Joliet + UDF 2.60 written and read back with pycdlib (only here).

The layout (names, labels, the small files) is :mod:`client.dvd_layout`.
Payload bytes are streamed from their source file into the image
(``add_fp`` over a byte-range view, ``write_fp``), never held in memory.
:func:`verify_image` opens a written image again and checks the labels, the
three directory trees and every file's SHA-256 before anything is reported
as done.
"""

import hashlib
import io
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, BinaryIO, cast

import pycdlib
from pycdlib.pycdlibexception import PyCdlibException

from client.dvd_layout import SECTOR_BYTES, DiscFile, iso9660_name
from client.errors import ClientError
from client.i18n import _

UDF_REVISION = "2.60"
INTERCHANGE_LEVEL = 3
JOLIET_LEVEL = 3
_BLOCK = 1 << 20

Progress = Callable[[int], None]


def hash_ranges(
    path: Path, ranges: Sequence[tuple[int, int]], progress: Progress | None = None
) -> tuple[str, list[str]]:
    """One pass over ``path``: the SHA-256 of the whole file and of each range.

    Raises:
        ClientError: the file cannot be read or is shorter than the ranges.
    """
    whole = hashlib.sha256()
    parts: list[str] = []
    try:
        with path.open("rb") as handle:
            for _offset, length in ranges:
                digest = hashlib.sha256()
                left = length
                while left > 0:
                    block = handle.read(min(_BLOCK, left))
                    if not block:
                        raise ClientError(
                            _("{path}: the file shrank while it was read").format(path=path)
                        )
                    whole.update(block)
                    digest.update(block)
                    left -= len(block)
                    if progress is not None:
                        progress(len(block))
                parts.append(digest.hexdigest())
            if handle.read(1):
                raise ClientError(_("{path}: the file grew while it was read").format(path=path))
    except OSError as exc:
        raise ClientError(
            _("{path}: cannot read: {reason}").format(path=path, reason=exc.strerror or exc)
        ) from None
    return whole.hexdigest(), parts


def write_image(
    path: Path,
    label: str,
    files: Sequence[DiscFile],
    *,
    limit: int,
    progress: Progress | None = None,
) -> int:
    """Master an image with ``files`` at its root into the new, empty file ``path``.

    Returns:
        The image size in bytes as pycdlib laid it out.

    Raises:
        ClientError: the layout exceeds ``limit`` bytes, pycdlib refused a name or
            failed, or writing failed.
    """
    iso = pycdlib.PyCdlib()
    handles: list[io.BufferedReader] = []
    try:
        iso.new(
            interchange_level=INTERCHANGE_LEVEL,
            joliet=JOLIET_LEVEL,
            udf=UDF_REVISION,
            vol_ident=label,
            sys_ident="LGWAN",
            app_ident_str="lgwan-client dvd",
        )
        for item in files:
            reader: io.RawIOBase | io.BytesIO = io.BytesIO(item.data)
            if item.source is not None:
                handle = item.source.open("rb")
                handles.append(handle)
                reader = _Range(handle, item.offset, item.size)
            iso.add_fp(
                cast(BinaryIO, reader),
                item.size,
                iso_path="/" + iso9660_name(item.name),
                joliet_path="/" + item.name,
                udf_path="/" + item.name,
            )
        planned = int(iso.pvd.space_size) * SECTOR_BYTES  # pycdlib's own layout
        if planned > limit:
            raise ClientError(
                _("{name}: the image would take {size} bytes, over {limit}").format(
                    name=path.name, size=planned, limit=limit
                )
            )
        done = 0

        def report(now: int, _total: int, _opaque: object) -> None:
            nonlocal done
            if progress is not None and now > done:
                progress(now - done)
            done = max(done, now)

        with path.open("r+b") as sink:
            iso.write_fp(sink, blocksize=_BLOCK, progress_cb=report)
            sink.flush()
            os.fsync(sink.fileno())
    except PyCdlibException as exc:
        raise ClientError(
            _("{name}: cannot build the image: {reason}").format(name=path.name, reason=exc)
        ) from None
    except OSError as exc:
        raise ClientError(
            _("{path}: cannot write the image: {reason}").format(
                path=path, reason=exc.strerror or exc
            )
        ) from None
    finally:
        iso.close()
        for handle in handles:
            handle.close()
    return planned


def verify_image(
    path: Path, label: str, files: Sequence[DiscFile], progress: Progress | None = None
) -> tuple[int, str]:
    """Read a written image back: labels, Joliet and UDF present, every file's SHA-256.

    Each file is read through UDF and hashed; its ISO 9660 and Joliet records
    must point at the same data.

    Returns:
        The image's size and SHA-256.

    Raises:
        ClientError: anything differs from what was meant to be written.
    """
    size, sha = _hash_file(path, progress)
    iso = pycdlib.PyCdlib()
    try:
        iso.open(str(path))
        _check_labels(iso, label, path.name)
        _check_trees(iso, files, path.name)
        for item in files:
            _check_file(iso, item, path.name)
    except PyCdlibException as exc:
        raise ClientError(
            _("{name}: the image does not read back: {reason}").format(name=path.name, reason=exc)
        ) from None
    except (AttributeError, IndexError, UnicodeDecodeError) as exc:
        raise ClientError(
            _("{name}: unexpected image structure: {reason}").format(name=path.name, reason=exc)
        ) from None
    finally:
        iso.close()
    return size, sha


def _check_labels(iso: Any, label: str, image: str) -> None:
    """The volume label in the primary, Joliet and UDF descriptors; Joliet and UDF present."""
    if not iso.has_joliet() or not iso.has_udf():
        raise ClientError(_("{name}: Joliet or UDF is missing from the image").format(name=image))
    primary = bytes(iso.pvd.volume_identifier).decode("ascii").rstrip(" ")
    joliet = bytes(iso.joliet_vd.volume_identifier).decode("utf-16-be").rstrip(" ")
    udf = _dstring(bytes(iso.udf_main_descs.logical_volumes[0].logical_vol_ident))
    if not primary == joliet == udf == label:
        raise ClientError(
            _("{name}: volume labels {found}, not {label}").format(
                name=image, found=f"{primary!r}/{joliet!r}/{udf!r}", label=repr(label)
            )
        )


def _check_trees(iso: Any, files: Sequence[DiscFile], image: str) -> None:
    """The root of each directory tree lists exactly the expected names."""
    want_iso = {iso9660_name(f.name) for f in files}
    want = {f.name for f in files}
    if len(want_iso) != len(files):
        raise ClientError(_("{name}: two files share an ISO 9660 name").format(name=image))
    trees = {
        "ISO 9660": (_names(iso, "iso_path", "ascii"), want_iso),
        "Joliet": (_names(iso, "joliet_path", "utf-16-be"), want),
        "UDF": (_names(iso, "udf_path", "utf-8"), want),
    }
    for tree, (found, expected) in trees.items():
        if found != expected:
            raise ClientError(
                _("{name}: the {tree} tree lists {found}").format(
                    name=image, tree=tree, found=sorted(found)
                )
            )


def _names(iso: Any, key: str, encoding: str) -> set[str]:
    names: set[str] = set()
    for child in iso.list_children(**{key: "/"}):
        if key != "udf_path" and (child.is_dot() or child.is_dotdot()):
            continue
        names.add(bytes(child.file_identifier()).decode(encoding))
    return names


def _check_file(iso: Any, item: DiscFile, image: str) -> None:
    """Hash one file through UDF; ISO 9660 and Joliet must share its data."""
    udf = iso.get_record(udf_path="/" + item.name)
    if udf.get_data_length() != item.size:
        raise ClientError(
            _("{name}: {file}: size differs from what was written").format(
                name=image, file=item.name
            )
        )
    sink = _HashSink()
    iso.get_file_from_iso_fp(sink, udf_path="/" + item.name, blocksize=_BLOCK)
    if sink.size != item.size or sink.digest.hexdigest() != item.sha256:
        raise ClientError(
            _("{name}: {file}: SHA-256 differs from what was written").format(
                name=image, file=item.name
            )
        )
    primary = iso.get_record(iso_path="/" + iso9660_name(item.name))
    joliet = iso.get_record(joliet_path="/" + item.name)
    if primary.inode is not udf.inode or joliet.inode is not udf.inode:
        raise ClientError(
            _("{name}: {file}: the directory trees disagree about its data").format(
                name=image, file=item.name
            )
        )


def _dstring(field: bytes) -> str:
    """Decode an ECMA-167 dstring (compression id, characters, length byte)."""
    length = field[-1]
    if length == 0:
        return ""
    body = field[1:length]
    return body.decode("utf-16-be") if field[0] == 16 else body.decode("latin-1")


def _hash_file(path: Path, progress: Progress | None) -> tuple[int, str]:
    digest = hashlib.sha256()
    size = 0
    try:
        with path.open("rb") as handle:
            while block := handle.read(_BLOCK):
                digest.update(block)
                size += len(block)
                if progress is not None:
                    progress(len(block))
    except OSError as exc:
        raise ClientError(
            _("{path}: cannot read back: {reason}").format(path=path, reason=exc.strerror or exc)
        ) from None
    return size, digest.hexdigest()


class _HashSink:
    """A write-only file object that hashes and counts what pycdlib writes into it."""

    def __init__(self) -> None:
        self.digest = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.digest.update(data)
        self.size += len(data)
        return len(data)


class _Range(io.RawIOBase):
    """A read-only, seekable view of ``length`` bytes of ``handle`` from ``offset``."""

    def __init__(self, handle: BinaryIO, offset: int, length: int) -> None:
        super().__init__()
        self._handle = handle
        self._offset = offset
        self._length = length
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._length}[whence]
        self._pos = min(max(0, base + offset), self._length)
        return self._pos

    def readinto(self, buffer: Any) -> int:
        want = min(len(buffer), self._length - self._pos)
        if want <= 0:
            return 0
        self._handle.seek(self._offset + self._pos)
        data = self._handle.read(want)
        buffer[: len(data)] = data
        self._pos += len(data)
        return len(data)
