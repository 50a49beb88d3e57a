"""What a disc written by ``lgwan-client dvd`` holds, read without trusting it.

``DISC.json`` (:func:`parse_disc_manifest`) and ``SHA256SUMS`` (:func:`parse_sums`)
are validated strictly; every name is checked with
:func:`envelope.manifest.check_file_name` before it is used. A disc is read as a
:class:`Medium`: an ISO 9660 image through pycdlib (its UDF names, or else its
Joliet names; pycdlib is used only here on the gateway side) or a directory (a
mounted disc or files copied from one). Only regular files at the root are
accepted; a subdirectory or a link refuses the disc.

The layout itself is written by ``client/dvd_layout.py`` and described in
docs/FORMAT.md; :mod:`gateway.dvd_import` verifies a set of discs and imports it.
"""

import contextlib
import os
import re
import unicodedata
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, ExitStack
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Protocol

import pycdlib
from pycdlib.pycdlibexception import PyCdlibException

from custody.canonical import parse_json_strict
from custody.errors import RecordError
from envelope import ManifestError
from envelope.manifest import check_batch_id, check_file_name, check_notice_type
from gateway.envelope_check import _
from gateway.errors import GatewayError

DISC_FORMAT = "lgwan-dvd/v1"
DISC_MANIFEST_NAME = "DISC.json"
SUMS_NAME = "SHA256SUMS"
README_NAME = "README.txt"
KIND_AGE, KIND_7Z = "age", "7z"
DISC_KEYS = frozenset(
    {
        "format",
        "batch_id",
        "notice_type",
        "serial",
        "part",
        "parts",
        "envelope_size",
        "envelope_sha256",
        "files",
        "created_at",
        "created_by",
        "kind",
    }
)
SEVEN_ZIP_KEYS = frozenset({"archive_name", "archive_size", "archive_sha256"})
"""Extra ``DISC.json`` keys a ``7z`` disc carries (the archive's own name, size, SHA-256)."""
MAX_DISC_JSON_BYTES = 1 << 20
MAX_SUMS_BYTES = 1 << 20
MAX_PARTS = 99
MAX_FILES = 1000
SERIAL_RE = re.compile(r"^[A-Za-z0-9]{1,32}-[0-9]{8}-[0-9]{3,6}$")
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_SUMS_LINE_RE = re.compile(r"^([0-9a-fA-F]{64}) [ *](.+)$")
_ISO_SUFFIX = ".iso"


class DiscError(GatewayError):
    """The disc (or set of discs) is refused; nothing was put in the spool (exit 1)."""


class Readable(Protocol):
    """A binary input stream."""

    def read(self, size: int = -1, /) -> bytes:
        """Read up to ``size`` bytes; ``b\"\"`` only at the end."""
        ...


@dataclass(frozen=True)
class DiscFile:
    """One file listed in ``DISC.json``."""

    name: str
    size: int
    sha256: str


@dataclass(frozen=True)
class DiscManifest:
    """A validated ``DISC.json``."""

    batch_id: str
    notice_type: str
    serial: str
    part: int
    parts: int
    envelope_size: int
    envelope_sha256: str
    files: tuple[DiscFile, ...]
    created_at: datetime
    created_by: str
    kind: str


# -- DISC.json and SHA256SUMS ------------------------------------------------------------------


def parse_disc_manifest(data: bytes, origin: str) -> DiscManifest:
    """Validate ``DISC.json`` from the disc ``origin``.

    Raises:
        DiscError: anything malformed, missing, unknown or unsafe.
    """
    try:
        doc = parse_json_strict(data, max_bytes=MAX_DISC_JSON_BYTES)
        return _disc_manifest(doc)
    except (RecordError, ManifestError, ValueError) as exc:
        raise DiscError(
            _("{origin}: {name} is invalid: {reason}").format(
                origin=origin, name=DISC_MANIFEST_NAME, reason=exc
            )
        ) from None


def _disc_manifest(doc: object) -> DiscManifest:
    if not isinstance(doc, dict):
        raise ValueError(_("not a JSON object"))
    allowed = DISC_KEYS | (SEVEN_ZIP_KEYS if doc.get("kind") == KIND_7Z else frozenset())
    keys = set(doc)
    if not DISC_KEYS <= keys <= allowed:
        missing, extra = sorted(DISC_KEYS - keys), sorted(keys - allowed)[:5]
        raise ValueError(
            _("wrong keys (missing {missing}, unknown {extra})").format(
                missing=missing, extra=extra
            )
        )
    if doc["format"] != DISC_FORMAT:
        raise ValueError(_("unsupported format (expected {format})").format(format=DISC_FORMAT))
    batch_id = check_batch_id(doc["batch_id"])
    notice_type = check_notice_type(doc["notice_type"])
    if batch_id.split("-")[1] != notice_type:
        raise ValueError(_("the batch id and the notice type disagree"))
    serial = doc["serial"]
    if not isinstance(serial, str) or not SERIAL_RE.fullmatch(serial):
        raise ValueError(_("serial is not PREFIX-YYYYMMDD-NNN"))
    part, parts = doc["part"], doc["parts"]
    if not (_is_int(parts) and 1 <= parts <= MAX_PARTS and _is_int(part) and 1 <= part <= parts):
        raise ValueError(
            _("part and parts must satisfy 1 <= part <= parts <= {max}").format(max=MAX_PARTS)
        )
    size, digest = doc["envelope_size"], doc["envelope_sha256"]
    if not _is_int(size) or size < 1:
        raise ValueError(_("envelope_size must be a positive integer"))
    if not isinstance(digest, str) or not _SHA256_RE.fullmatch(digest):
        raise ValueError(_("envelope_sha256 must be 64 lower-case hex digits"))
    kind = doc["kind"]
    if kind not in (KIND_AGE, KIND_7Z):
        raise ValueError(
            _("kind must be {age} or {seven_zip}").format(
                age=repr(KIND_AGE), seven_zip=repr(KIND_7Z)
            )
        )
    created_by = doc["created_by"]
    if (
        not isinstance(created_by, str)
        or len(created_by) > 200
        or any(unicodedata.category(c)[0] == "C" for c in created_by)
    ):
        raise ValueError(_("created_by must be printable text of at most 200 characters"))
    return DiscManifest(
        batch_id=batch_id,
        notice_type=notice_type,
        serial=serial,
        part=part,
        parts=parts,
        envelope_size=size,
        envelope_sha256=digest,
        files=_disc_files(doc["files"]),
        created_at=_aware_time(doc["created_at"]),
        created_by=created_by,
        kind=kind,
    )


def _disc_files(items: object) -> tuple[DiscFile, ...]:
    if not isinstance(items, list) or not 1 <= len(items) <= MAX_FILES:
        raise ValueError(_("files must list 1 to {max} entries").format(max=MAX_FILES))
    files: list[DiscFile] = []
    for item in items:
        if not isinstance(item, dict) or set(item) != {"name", "size", "sha256"}:
            raise ValueError(_("each files entry must have exactly name, size, sha256"))
        name, size, digest = check_file_name(item["name"]), item["size"], item["sha256"]
        if not _is_int(size) or size < 0:
            raise ValueError(_("a file size is not a non-negative integer"))
        if not isinstance(digest, str) or not _SHA256_RE.fullmatch(digest):
            raise ValueError(_("a file sha256 is not 64 lower-case hex digits"))
        files.append(DiscFile(name, size, digest))
    if len({f.name.casefold() for f in files}) != len(files):
        raise ValueError(_("two files share a name"))
    return tuple(files)


def _aware_time(value: object) -> datetime:
    if not isinstance(value, str):
        raise ValueError(_("created_at must be text"))
    parsed = datetime.fromisoformat(value)
    if parsed.utcoffset() is None:
        raise ValueError(_("created_at has no UTC offset"))
    return parsed


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def parse_sums(data: bytes, origin: str) -> dict[str, str]:
    """Parse a GNU coreutils ``SHA256SUMS`` (``<hex>  <name>`` lines) from disc ``origin``.

    Returns:
        File name to lower-case hex SHA-256.

    Raises:
        DiscError: not UTF-8, a malformed line, an unsafe or repeated name.
    """
    where = f"{origin}: {SUMS_NAME}"
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise DiscError(_("{where} is not UTF-8 text").format(where=where)) from None
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    if not 1 <= len(lines) <= MAX_FILES:
        raise DiscError(_("{where} must list 1 to {max} files").format(where=where, max=MAX_FILES))
    sums: dict[str, str] = {}
    for number, raw in enumerate(lines, 1):
        match = _SUMS_LINE_RE.fullmatch(raw.removesuffix("\r"))
        if match is None:
            raise DiscError(
                _("{where} line {number} is not '<sha256>  <name>'").format(
                    where=where, number=number
                )
            )
        try:
            name = check_file_name(match.group(2))
        except ManifestError as exc:
            raise DiscError(
                _("{where} line {number}: {reason}").format(where=where, number=number, reason=exc)
            ) from None
        if name in sums:
            raise DiscError(_("{where} lists {name} twice").format(where=where, name=name))
        sums[name] = match.group(1).lower()
    return sums


# -- media: ISO images and directories -------------------------------------------------------


class Medium(Protocol):
    """One disc as read: an image or a directory.

    Attributes:
        origin: how to name the disc to a person (the image file or directory).
        label: the volume label (images only).
        image: the image file (images only), to hash for the record.
    """

    origin: str
    label: str | None
    image: Path | None

    def entries(self) -> dict[str, int]:
        """The files at the disc's root and their sizes (names already checked safe).

        Raises:
            DiscError: an unsafe name, a subdirectory or a link.
        """
        ...

    def open(self, name: str) -> AbstractContextManager[Readable]:
        """Open the root file ``name`` (one returned by :meth:`entries`) for reading."""
        ...

    def close(self) -> None:
        """Release the image."""
        ...


def _safe_name(name: str, origin: str) -> str:
    try:
        return check_file_name(name)
    except ManifestError as exc:
        raise DiscError(
            _("{origin}: a file on the disc has an unsafe name: {reason}").format(
                origin=origin, reason=exc
            )
        ) from None


class _IsoMedium:
    """An ISO 9660 image read with pycdlib through its UDF (or else Joliet) names."""

    def __init__(self, path: Path) -> None:
        self.origin = path.name
        self.image: Path | None = path
        self._iso = pycdlib.PyCdlib()
        try:
            self._iso.open(str(path))
        except OSError:
            raise
        except Exception as exc:  # pycdlib raises many kinds on a hostile image
            raise DiscError(
                _("{image}: not a readable ISO 9660 image ({reason})").format(
                    image=path.name, reason=exc
                )
            ) from None
        try:
            if self._iso.has_udf():
                self._key = "udf_path"
            elif self._iso.has_joliet():
                self._key = "joliet_path"
            else:
                raise DiscError(
                    _(
                        "{image}: the image has neither UDF nor Joliet file names:"
                        " not a disc written by lgwan-client dvd"
                    ).format(image=path.name)
                )
            volume = bytes(self._iso.pvd.volume_identifier)
        except BaseException:
            self._iso.close()
            raise
        label = volume.decode("ascii", "replace").strip(" \x00")
        self.label: str | None = "".join(c if c.isprintable() else "?" for c in label)

    def entries(self) -> dict[str, int]:
        found: dict[str, int] = {}
        try:
            children = list(self._iso.list_children(**{self._key: "/"}))
        except PyCdlibException as exc:
            raise DiscError(
                _("{origin}: cannot list the image's root ({reason})").format(
                    origin=self.origin, reason=exc
                )
            ) from None
        for child in children:
            if child is None or child.is_dot() or child.is_dotdot():
                continue
            raw = bytes(child.file_identifier())
            encoding = "utf-16-be" if self._key == "joliet_path" else "utf-8"
            try:
                name = raw.decode(encoding)
            except UnicodeDecodeError:
                raise DiscError(
                    _("{origin}: a file name on the disc is not text").format(origin=self.origin)
                ) from None
            name = _safe_name(name, self.origin)
            if child.is_dir() or not _iso_is_file(child):
                raise DiscError(
                    _("{origin}: unexpected directory or link {name} on the disc").format(
                        origin=self.origin, name=repr(name)
                    )
                )
            found[name] = int(child.get_data_length())
        return found

    @contextlib.contextmanager
    def open(self, name: str) -> Iterator[Readable]:
        try:
            handle = self._iso.open_file_from_iso(**{self._key: "/" + name})
        except PyCdlibException as exc:
            raise DiscError(
                _("{origin}: cannot read {name} ({reason})").format(
                    origin=self.origin, name=name, reason=exc
                )
            ) from None
        with handle:
            yield _IsoReader(handle, f"{self.origin}: {name}")

    def close(self) -> None:
        self._iso.close()


class _IsoReader:
    """A file inside an image; pycdlib's failures on a damaged image become DiscError."""

    def __init__(self, inner: Readable, where: str) -> None:
        self._inner = inner
        self._where = where

    def read(self, size: int = -1, /) -> bytes:
        try:
            return self._inner.read(size)
        except OSError:
            raise
        except Exception as exc:  # pycdlib raises many kinds on a damaged image
            raise DiscError(
                _("{where}: cannot be read ({reason})").format(where=self._where, reason=exc)
            ) from None


def _iso_is_file(child: object) -> bool:
    is_file = getattr(child, "is_file", None)
    is_symlink = getattr(child, "is_symlink", None)
    if is_symlink is not None and is_symlink():
        return False
    return True if is_file is None else bool(is_file())


class _DirMedium:
    """A mounted disc or a directory of files copied from one."""

    def __init__(self, path: Path) -> None:
        self.origin = str(path)
        self.image: Path | None = None
        self.label: str | None = None
        self._path = path

    def entries(self) -> dict[str, int]:
        found: dict[str, int] = {}
        with os.scandir(self._path) as listing:
            for entry in listing:
                name = _safe_name(entry.name, self.origin)
                if not entry.is_file(follow_symlinks=False):
                    raise DiscError(
                        _("{origin}: unexpected directory or link {name}").format(
                            origin=self.origin, name=repr(name)
                        )
                    )
                found[name] = entry.stat(follow_symlinks=False).st_size
        return found

    @contextlib.contextmanager
    def open(self, name: str) -> Iterator[Readable]:
        flags = os.O_RDONLY | os.O_CLOEXEC | getattr(os, "O_NOFOLLOW", 0)
        with os.fdopen(os.open(self._path / name, flags), "rb") as handle:
            yield handle

    def close(self) -> None:
        """Nothing to release."""


def open_media(sources: Sequence[Path], stack: ExitStack) -> list[Medium]:
    """One medium per disc: ISO files, disc directories, directories of ISO files.

    A directory holding ``DISC.json`` is a disc; any other directory stands for
    the ``.iso`` images in it (a split set). Each medium is closed by ``stack``.

    Raises:
        DiscError: a source is missing, given twice, not a readable image, or a
            directory with neither ``DISC.json`` nor images.
    """
    paths: list[Path] = []
    for source in sources:
        if source.is_dir() and not os.path.lexists(source / DISC_MANIFEST_NAME):
            images = sorted(
                p for p in source.iterdir() if p.suffix.lower() == _ISO_SUFFIX and p.is_file()
            )
            if not images:
                raise DiscError(
                    _(
                        "{source}: holds neither {name} nor .iso images:"
                        " not a disc written by lgwan-client dvd"
                    ).format(source=source, name=DISC_MANIFEST_NAME)
                )
            paths.extend(images)
        elif source.exists():
            paths.append(source)
        else:
            raise DiscError(_("{source}: no such file or directory").format(source=source))
    seen: set[Path] = set()
    media: list[Medium] = []
    for path in paths:
        resolved = path.resolve()
        if resolved in seen:
            raise DiscError(_("{path} is given twice").format(path=path))
        seen.add(resolved)
        medium: Medium = _DirMedium(path) if path.is_dir() else _IsoMedium(path)
        stack.callback(medium.close)
        media.append(medium)
    return media
