"""``manifest.json``: what a batch holds, sealed inside its envelope.

The manifest is the first member of the tar inside every envelope. It names the
batch and lists each print file with its size, SHA-256 and record count, so the
print site can prove it received exactly what the ward sealed. Everything in it
arrives from outside at the print site: :func:`parse` validates every field and
every file name before anything is written to disk.
"""

import json
import re
import secrets as _secrets
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from envelope.errors import ManifestError

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = "lgwan-manifest/v1"
MAX_MANIFEST_BYTES = 4 * 1024 * 1024
MAX_FILES = 1000
MAX_NAME_BYTES = 255
BATCH_ID_RE = re.compile(
    r"^(?P<date>[0-9]{8})-(?P<type>[A-Z][A-Z0-9]{1,15})-(?P<suffix>[0-9A-Z]{6})$"
)
NOTICE_TYPE_RE = re.compile(r"^[A-Z][A-Z0-9]{1,15}$")
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_WINDOWS_DEVICES = frozenset(
    ["CON", "PRN", "AUX", "NUL", "CONIN$", "CONOUT$"]
    + [f"{port}{n}" for port in ("COM", "LPT") for n in "123456789¹²³"]
)
_SUFFIX_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


@dataclass(frozen=True)
class FileEntry:
    """One print file inside a batch."""

    name: str
    size: int
    sha256: str
    records: int


@dataclass(frozen=True)
class Manifest:
    """What the ward sealed: the batch, its files and who sealed it when."""

    batch_id: str
    notice_type: str
    created_at: datetime
    created_by: str
    files: tuple[FileEntry, ...]

    @property
    def record_total(self) -> int:
        """Sum of the record counts of all files."""
        return sum(f.records for f in self.files)


def new_batch_id(notice_type: str, now: datetime) -> str:
    """Return a fresh, filename-safe, human-readable batch id.

    Args:
        notice_type: upper-case notice type such as ``KAIGO``.
        now: timezone-aware creation time; its local date leads the id.

    Returns:
        An id like ``20260715-KAIGO-7F3KQ2`` (30 random bits in the suffix).

    Raises:
        ManifestError: the notice type is not 2–16 of ``A-Z0-9`` starting with a letter.
    """
    check_notice_type(notice_type)
    suffix = "".join(_secrets.choice(_SUFFIX_ALPHABET) for _ in range(6))
    return f"{now:%Y%m%d}-{notice_type}-{suffix}"


def check_batch_id(value: object) -> str:
    """Return ``value`` if it is a well-formed batch id with a real date, else raise."""
    if not isinstance(value, str) or not BATCH_ID_RE.fullmatch(value):
        raise ManifestError("not a batch id (expected YYYYMMDD-TYPE-XXXXXX)")
    try:
        datetime.strptime(value[:8], "%Y%m%d")
    except ValueError:
        raise ManifestError("the batch id does not start with a real date") from None
    return value


def check_notice_type(value: object) -> str:
    """Return ``value`` if it is a valid notice type, else raise ManifestError."""
    if not isinstance(value, str) or not NOTICE_TYPE_RE.fullmatch(value):
        raise ManifestError(
            "notice type must be 2-16 upper-case letters or digits, starting with a letter"
        )
    return value


def check_file_name(name: object) -> str:
    """Return ``name`` if it is safe as a single file name on every platform we serve.

    Refused: empty, ``.``/``..``, leading dot, any path separator or drive
    colon, control characters (NUL included), characters Windows forbids,
    trailing dot or space, Windows device names (``CON``, ``NUL.csv``,
    ``COM1`` …), names not in Unicode NFC, names longer than
    :data:`MAX_NAME_BYTES` bytes of UTF-8, and the manifest's own name.

    Raises:
        ManifestError: the name is unsafe; the message does not echo it in full.
    """
    if not isinstance(name, str) or not name:
        raise ManifestError("file name is empty or not text")
    if len(name.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
        raise ManifestError(f"file name is longer than {MAX_NAME_BYTES} bytes")
    if unicodedata.normalize("NFC", name) != name:
        raise ManifestError("file name is not in Unicode NFC form")
    bad = set('/\\:*?"<>|')
    if (
        name.startswith(".")
        or name.endswith((".", " "))
        or name.casefold() == MANIFEST_NAME
        or name.split(".", 1)[0].upper() in _WINDOWS_DEVICES
        or any(c in bad or unicodedata.category(c) in ("Cc", "Cf", "Cs", "Zl", "Zp") for c in name)
    ):
        raise ManifestError(f"unsafe file name {name[:40]!r}")
    return name


def dumps(manifest: Manifest) -> bytes:
    """Serialize a manifest as indented UTF-8 JSON (stable key order)."""
    doc = {
        "format": MANIFEST_FORMAT,
        "batch_id": manifest.batch_id,
        "notice_type": manifest.notice_type,
        "created_at": manifest.created_at.isoformat(timespec="seconds"),
        "created_by": manifest.created_by,
        "files": [
            {"name": f.name, "size": f.size, "sha256": f.sha256, "records": f.records}
            for f in manifest.files
        ],
    }
    return (json.dumps(doc, ensure_ascii=False, indent=2, sort_keys=False) + "\n").encode("utf-8")


def parse(data: bytes) -> Manifest:
    """Parse and validate a manifest that arrived from outside.

    Args:
        data: the bytes of ``manifest.json``.

    Returns:
        The validated manifest.

    Raises:
        ManifestError: anything malformed, unknown, duplicated or unsafe.
    """
    if len(data) > MAX_MANIFEST_BYTES:
        raise ManifestError("manifest is too large")
    try:
        doc = json.loads(data.decode("utf-8"), object_pairs_hook=_no_duplicates)
    except (ValueError, RecursionError) as exc:  # decode/JSON errors, huge ints, deep nesting
        raise ManifestError(f"manifest is not valid UTF-8 JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise ManifestError("manifest is not a JSON object")
    _exact_keys(doc, {"format", "batch_id", "notice_type", "created_at", "created_by", "files"})
    if doc["format"] != MANIFEST_FORMAT:
        raise ManifestError("unsupported manifest format")
    created_by = doc["created_by"]
    if (
        not isinstance(created_by, str)
        or len(created_by) > 200
        or any(unicodedata.category(c)[0] == "C" for c in created_by)
    ):
        raise ManifestError("created_by must be printable text of at most 200 characters")
    files = doc["files"]
    if not isinstance(files, list) or not 1 <= len(files) <= MAX_FILES:
        raise ManifestError(f"files must list 1 to {MAX_FILES} entries")
    entries = tuple(_parse_entry(f) for f in files)
    if len({e.name.casefold() for e in entries}) != len(entries):
        raise ManifestError("two files share a name")
    batch_id = check_batch_id(doc["batch_id"])
    notice_type = check_notice_type(doc["notice_type"])
    if batch_id.split("-")[1] != notice_type:
        raise ManifestError("the batch id and the notice type disagree")
    return Manifest(
        batch_id=batch_id,
        notice_type=notice_type,
        created_at=_parse_time(doc["created_at"]),
        created_by=created_by,
        files=entries,
    )


def _parse_entry(item: object) -> FileEntry:
    """Validate one ``files`` entry."""
    if not isinstance(item, dict):
        raise ManifestError("a files entry is not an object")
    _exact_keys(item, {"name", "size", "sha256", "records"})
    size, records, digest = item["size"], item["records"], item["sha256"]
    if not _is_count(size) or not _is_count(records):
        raise ManifestError("size and records must be non-negative integers")
    if not isinstance(digest, str) or not _SHA256_RE.fullmatch(digest):
        raise ManifestError("sha256 must be 64 lower-case hex digits")
    return FileEntry(name=check_file_name(item["name"]), size=size, sha256=digest, records=records)


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**63


def _parse_time(value: object) -> datetime:
    if not isinstance(value, str):
        raise ManifestError("created_at must be text")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise ManifestError("created_at is not ISO 8601") from None
    if parsed.tzinfo is None:
        raise ManifestError("created_at has no UTC offset")
    return parsed


def _exact_keys(doc: Mapping[str, Any], expected: set[str]) -> None:
    keys = set(doc)
    if keys != expected:
        missing, extra = sorted(expected - keys), sorted(keys - expected)
        raise ManifestError(f"manifest keys wrong (missing {missing}, unknown {extra[:5]})")


def _no_duplicates(pairs: Sequence[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ManifestError(f"duplicate key {key[:40]!r} in manifest")
        out[key] = value
    return out
