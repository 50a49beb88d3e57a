"""What a DVD holds: names, volume labels, the split plan, README.txt, DISC.json, SHA256SUMS.

Pure layout, no pycdlib (that is :mod:`client.dvd_iso`). Every disc holds, at
its root, four files: the payload (``<batch>.age`` or ``<batch>.7z``, or one
byte-range ``<name>.001``, ``.002`` … of it when the batch spans several
discs), ``README.txt`` (Japanese and English, CRLF), ``DISC.json`` (canonical
JSON, format ``lgwan-dvd/v1``) and ``SHA256SUMS`` (GNU ``sha256sum`` lines for
the other three files, plus the whole payload's line on a split disc). Joliet
and UDF carry these names as they are; ISO 9660 (interchange level 3) gets an
upper-case d-character form of each (``20260715_KAIGO_7F3KQ2.AGE;1``).
"""

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from client.errors import ClientError
from client.i18n import _
from custody import canonical_json
from envelope.manifest import BATCH_ID_RE

FORMAT = "lgwan-dvd/v1"
KIND_AGE = "age"
KIND_7Z = "7z"
README_NAME = "README.txt"
DISC_NAME = "DISC.json"
SUMS_NAME = "SHA256SUMS"
SECTOR_BYTES = 2048
LABEL_MAX = 16
ISO9660_NAME_MAX = 30
"""Ecma-119 7.5.2: file name plus extension, without the dot and version."""
IMAGE_RESERVE_BYTES = 768 * 1024
"""Room kept in each image for the file systems' structures and the small files.

An image with the four files needs about 280 sectors beside the payload (UDF
anchors sit at sector 256); 384 sectors leave a margin for README and DISC.json.
"""
_D_CHARS = re.compile(r"[^A-Z0-9_]")


@dataclass(frozen=True)
class DiscSet:
    """What every disc of one run says about the batch."""

    batch: str
    kind: str
    notice_type: str
    envelope_size: int
    envelope_sha256: str
    created_at: str
    created_by: str


@dataclass(frozen=True)
class DiscFile:
    """One file placed at the disc's root: small ``data``, or a range of ``source``."""

    name: str
    size: int
    sha256: str
    data: bytes = b""
    source: Path | None = None
    offset: int = 0

    @classmethod
    def of_bytes(cls, name: str, data: bytes) -> "DiscFile":
        """A small file held in memory (README, DISC.json, SHA256SUMS)."""
        return cls(name, len(data), hashlib.sha256(data).hexdigest(), data=data)


def volume_label(batch_id: str, part: int, parts: int) -> str:
    """The volume label (≤ 16 d-characters): ``KAIGO_7F3KQ2``, ``_2`` added per part.

    Falls back to ``20260715_7F3KQ2`` / ``260715_7F3KQ2`` when the notice type is long.
    """
    found = BATCH_ID_RE.fullmatch(batch_id)
    if found is None:
        raise ValueError(f"not a batch id: {batch_id!r}")
    date, kind, suffix = found.group("date", "type", "suffix")
    tail = f"_{part}" if parts > 1 else ""
    for core in (f"{kind}_{suffix}", f"{date}_{suffix}", f"{date[2:]}_{suffix}", suffix):
        if len(core) + len(tail) <= LABEL_MAX:
            return core + tail
    raise ValueError(f"too many parts for a volume label: {parts}")


def iso9660_name(name: str) -> str:
    """The ISO 9660 level-3 name for a Joliet/UDF name: ``A-Z0-9_``, one dot, ``;1``."""
    base, dot, ext = name.upper().rpartition(".")
    if not dot:
        base, ext = ext, ""
    base, ext = _D_CHARS.sub("_", base), _D_CHARS.sub("_", ext)[:3]
    base = base[: ISO9660_NAME_MAX - len(ext)] or "_"
    return f"{base}.{ext};1"


def part_name(payload_name: str, part: int, parts: int) -> str:
    """``<batch>.age`` for a single disc, ``<batch>.age.001`` … for a split one."""
    return payload_name if parts == 1 else f"{payload_name}.{part:03d}"


def image_paths(out: Path, parts: int) -> list[Path]:
    """``FILE.iso`` for one disc; ``FILE-1of3.iso``, ``FILE-2of3.iso`` … for several."""
    if parts == 1:
        return [out]
    return [out.with_name(f"{out.stem}-{i}of{parts}{out.suffix}") for i in range(1, parts + 1)]


def payload_capacity(split_bytes: int) -> int:
    """Payload bytes one image can carry within ``split_bytes`` (a multiple of a sector).

    Raises:
        ClientError: ``split_bytes`` leaves no room for any payload.
    """
    capacity = (split_bytes - IMAGE_RESERVE_BYTES) // SECTOR_BYTES * SECTOR_BYTES
    if capacity <= 0:
        raise ClientError(
            _("dvd.split_bytes {value} leaves no room for data on a disc").format(value=split_bytes)
        )
    return capacity


def plan_ranges(size: int, capacity: int) -> list[tuple[int, int]]:
    """Split ``size`` payload bytes into (offset, length) ranges of at most ``capacity``."""
    if size <= 0:
        raise ClientError(_("the payload is empty"))
    return [(start, min(capacity, size - start)) for start in range(0, size, capacity)]


def image_estimate(ranges: Sequence[tuple[int, int]]) -> int:
    """Upper bound of the bytes the images for ``ranges`` take on disk."""
    return sum(_round_up(length) + IMAGE_RESERVE_BYTES for _, length in ranges)


def _round_up(size: int) -> int:
    return -(-size // SECTOR_BYTES) * SECTOR_BYTES


def sums_text(lines: Sequence[tuple[str, str]]) -> bytes:
    """GNU coreutils ``sha256sum`` text: ``<hex>  <name>`` per (sha256, name)."""
    return "".join(f"{sha}  {name}\n" for sha, name in lines).encode("utf-8")


def disc_files(
    job: DiscSet,
    payload: Path,
    span: tuple[int, int],
    part_sum: str,
    serial: str,
    part: int,
    parts: int,
    whole: str,
) -> list[DiscFile]:
    """The four files at a disc's root, in the order they are written.

    ``DISC.json``'s ``envelope_size``/``envelope_sha256`` describe the whole
    payload the parts re-form: the sealed envelope, or for ``7z`` the archive
    (whose SHA-256 the ledger's ``dvd-created`` entry records beside the envelope's).
    """
    name = payload.name
    offset, length = span
    data = DiscFile(part_name(name, part, parts), length, part_sum, source=payload, offset=offset)
    readme = DiscFile.of_bytes(README_NAME, readme_text(job, serial, part, parts, name))
    doc: dict[str, object] = {
        "format": FORMAT,
        "batch_id": job.batch,
        "notice_type": job.notice_type,
        "serial": serial,
        "part": part,
        "parts": parts,
        "envelope_size": payload.stat().st_size,
        "envelope_sha256": whole,
        "files": [{"name": f.name, "size": f.size, "sha256": f.sha256} for f in (data, readme)],
        "created_at": job.created_at,
        "created_by": job.created_by,
        "kind": job.kind,
    }
    disc = DiscFile.of_bytes(DISC_NAME, canonical_json(doc))
    lines = [(f.sha256, f.name) for f in (data, readme, disc)]
    if parts > 1:
        lines.append((whole, name))
    return [data, readme, disc, DiscFile.of_bytes(SUMS_NAME, sums_text(lines))]


def readme_text(job: DiscSet, serial: str, part: int, parts: int, name: str) -> bytes:
    """README.txt in Japanese and English, UTF-8 with CRLF line ends (for Notepad)."""
    first = name + (".001" if parts > 1 else "")
    values = {**job.__dict__, "serial": serial, "part": part, "parts": parts, "name": name}
    split_ja = _SPLIT_JA.format(**values, first=first) if parts > 1 else ""
    split_en = _SPLIT_EN.format(**values, first=first) if parts > 1 else ""
    text = _README.format(
        **values,
        split_ja=split_ja,
        split_en=split_en,
        how_ja=_HOW_JA[job.kind].format(**values, first=first),
        how_en=_HOW_EN[job.kind].format(**values, first=first),
    )
    return text.replace("\n", "\r\n").encode("utf-8")


_README = """\
LGWAN 印刷データ DVD / LGWAN print-data DVD

バッチ / Batch: {batch}
通知種別 / Notice type: {notice_type}
ディスク番号 / Disc serial: {serial} ({part}/{parts})
作成 / Created: {created_at} {created_by}

【日本語】
このディスクのデータは暗号化されています。パスフレーズは、このディスクとは別の
機会に渡されるパスワード通知書に記載されています。ディスクと通知書は別々の
施錠保管庫に保管してください。確認: sha256sum -c --ignore-missing SHA256SUMS
{split_ja}{how_ja}
このディスクは区の受け渡し台帳で管理されています。返却・紛失は区の担当者へ。

[English]
The data on this disc is encrypted. The passphrase is on the password notice,
handed over separately on another occasion. Keep the disc and the notice in
separate locked cabinets. Check: sha256sum -c --ignore-missing SHA256SUMS
{split_en}{how_en}
This disc is recorded in the ward's hand-over ledger; report its return or loss
to the ward.
"""
_SPLIT_JA = """\
このデータは {parts} 枚のディスクに分割されています（このディスクは {part} 枚目）。
全ディスクの {name}.001, .002 … を一つのフォルダにコピーしてから開いてください。
"""
_SPLIT_EN = """\
The data is split across {parts} discs (this is disc {part}). Copy {name}.001,
.002 ... from every disc into one folder before opening.
"""
_HOW_JA = {
    KIND_AGE: """\
開き方: 印刷事業者のシステムで lgwan-gateway dvd-import <ISO またはフォルダ> の後、
lgwan-gateway open でパスフレーズを入力します。age コマンドの場合（分割時は先に
cat {name}.0* > {name} / Windows: copy /b {name}.001+{name}.002 {name} で連結）:
age -d -o {batch}.tar {name}
""",
    KIND_7Z: """\
開き方: 7-Zip で {first} を開き、パスワード通知書のパスフレーズを入力します。
パスフレーズを入力するまでファイル名も表示されません。展開後、アーカイブ内の
SHA256SUMS でファイルを確認してください。
""",
}
_HOW_EN = {
    KIND_AGE: """\
To open: at the print site run lgwan-gateway dvd-import <ISO or folder>, then
lgwan-gateway open with the passphrase. With the age tool (join split data first:
cat {name}.0* > {name}, Windows: copy /b {name}.001+{name}.002 {name}):
age -d -o {batch}.tar {name}   (a tar holding manifest.json and the files)
""",
    KIND_7Z: """\
To open: open {first} with 7-Zip and type the passphrase from the password
notice; not even the file names show without it. After extracting, check the
files against the SHA256SUMS inside the archive.
""",
}
