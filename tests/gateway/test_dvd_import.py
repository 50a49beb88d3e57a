"""``lgwan-gateway dvd-import`` and ``batches``, run as subprocesses against real ISO images."""

import fcntl
import hashlib
import io
import json
import os
import pty
import shutil
import struct
import subprocess
import termios
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pycdlib
import pytest

from custody.canonical import canonical_json
from envelope.stream import ENCRYPTED_CHUNK_SIZE
from gateway.dvd_disc import DiscError, parse_disc_manifest, parse_sums
from tests.conftest import BIN, CliRunner, Result
from tests.gateway.custody_kit import run
from tests.gateway.test_envelope_check import SECRET, sealed_envelope, x25519_file

BATCH = "20260715-KAIGO-7F3KQ2"
OTHER = "20260716-JUMIN-AB12CD"
PASSWORD = "handler-pass-4821-x"  # a staff member's, for open
TENANT = "shinjuku"
ENVELOPE = sealed_envelope(BATCH, padding=150_000)
PAYLOAD_START = ENVELOPE.index(b"\n", ENVELOPE.index(b"\n--- ") + 1) + 1 + 16
README = (
    "この DVD には暗号化された印刷データが入っています。\r\n"
    "開き方: lgwan-gateway dvd-import、または age -d(パスワードは別送の通知書)。\r\n"
    "This disc holds an encrypted print batch. Open it with lgwan-gateway dvd-import.\r\n"
).encode()

Files = dict[str, bytes]
Tamper = Callable[[Files], None]


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def disc_files(
    envelope: bytes,
    pieces: Files,
    *,
    batch: str = BATCH,
    part: int = 1,
    parts: int = 1,
    kind: str = "age",
    serial: str = "DVD-20260715-001",
) -> Files:
    """The files at the root of one disc, laid out as the contract says (DISC.json, SUMS…)."""
    files = dict(pieces)
    files["README.txt"] = README
    doc = {
        "format": "lgwan-dvd/v1",
        "batch_id": batch,
        "notice_type": batch.split("-")[1],
        "serial": serial,
        "part": part,
        "parts": parts,
        "envelope_size": len(envelope),
        "envelope_sha256": _sha(envelope),
        "files": [{"name": n, "size": len(d), "sha256": _sha(d)} for n, d in pieces.items()],
        "created_at": "2026-07-15T10:00:00+09:00",
        "created_by": "shinjuku-ward (山田)",
        "kind": kind,
    }
    files["DISC.json"] = canonical_json(doc)
    sums = {name: _sha(data) for name, data in files.items()}
    if parts > 1:
        sums[f"{batch}.age"] = _sha(envelope)
    files["SHA256SUMS"] = "".join(f"{h}  {n}\n" for n, h in sorted(sums.items())).encode()
    return files


def write_iso(
    path: Path, files: Files, label: str, *, udf: bool = True, subdir: str | None = None
) -> Path:
    """Write an ISO 9660 image with Joliet (and UDF 2.60) names using pycdlib."""
    iso = pycdlib.PyCdlib()
    iso.new(interchange_level=3, joliet=3, udf="2.60" if udf else None, vol_ident=label)
    if subdir is not None:
        names = {"joliet_path": f"/{subdir}", "udf_path": f"/{subdir}" if udf else None}
        iso.add_directory(iso_path="/SUBDIR", **names)
    for index, (name, data) in enumerate(files.items()):
        names = {"joliet_path": f"/{name}"}
        if udf:
            names["udf_path"] = f"/{name}"
        iso.add_fp(io.BytesIO(data), len(data), iso_path=f"/F{index:03d}.;1", **names)
    iso.write(str(path))
    iso.close()
    return path


def disc_set(
    out: Path,
    envelope: bytes = ENVELOPE,
    *,
    batch: str = BATCH,
    parts: int = 1,
    tamper: dict[int, Tamper] | None = None,
    kind: str = "age",
    udf: bool = True,
) -> list[Path]:
    """ISO images of one batch, split into ``parts`` discs (``tamper[k]`` edits disc k's files)."""
    out.mkdir(parents=True, exist_ok=True)
    images = []
    step = -(-len(envelope) // parts)
    for k in range(1, parts + 1):
        if parts == 1:
            pieces = {f"{batch}.age": envelope}
        else:
            pieces = {f"{batch}.age.{k:03d}": envelope[(k - 1) * step : k * step]}
        serial = f"DVD-20260715-{k:03d}"
        files = disc_files(
            envelope, pieces, batch=batch, part=k, parts=parts, kind=kind, serial=serial
        )
        if tamper and k in tamper:
            tamper[k](files)
        name = f"{batch}.iso" if parts == 1 else f"{batch}-{k}of{parts}.iso"
        images.append(write_iso(out / name, files, batch[:8] + "_" + batch[-6:], udf=udf))
    return images


@dataclass(frozen=True)
class Site:
    """A print site made by ``lgwan-gateway init --root`` (work factor minimum lowered to 10)."""

    root: Path
    run: Callable[..., Result]

    @property
    def spool(self) -> Path:
        return self.root / "spool"

    def spooled(self) -> list[str]:
        return sorted(p.name for p in self.spool.iterdir()) if self.spool.exists() else []

    def audit(self, event: str) -> list[dict[str, object]]:
        lines = (self.root / "audit" / "audit.jsonl").read_text().splitlines()
        return [doc for doc in map(json.loads, lines) if doc["event"] == event]


@pytest.fixture
def site(tmp_path: Path, gateway: CliRunner) -> Site:
    """An initialised print-site root; ``site.run(...)`` runs lgwan-gateway with its config."""
    root = tmp_path / "site"
    assert gateway("init", "--root", root).code == 0
    config = root / "gateway.toml"
    text = config.read_text()
    assert "min_work_factor = 18" in text
    config.write_text(text.replace("min_work_factor = 18", "min_work_factor = 10"))
    return Site(root, lambda *args, **kw: gateway("--config", config, *args, **kw))


def _import(site: Site, *sources: Path, tenant: str = TENANT) -> Result:
    return site.run("dvd-import", *sources, "--tenant", tenant)


def _refused(site: Site, result: Result, words: str) -> None:
    assert result.code == 1, result.err
    assert words in result.err, result.err
    assert result.out == ""
    assert "Traceback" not in result.err
    assert site.spooled() == [], site.spooled()
    refused = site.audit("dvd_refused")
    assert len(refused) == 1 and words in str(refused[0]["reason"])
    assert site.audit("dvd_imported") == []


# -- success --------------------------------------------------------------------------------


def test_single_disc_is_imported_and_audited(site: Site, tmp_path: Path) -> None:
    """A whole-envelope disc lands in the spool byte for byte, channel dvd, with its disc detail."""
    [image] = disc_set(tmp_path / "discs")
    result = _import(site, image)
    assert result.code == 0, result.err
    assert result.out == f"{BATCH}\n"
    assert "imported" in result.err and "DVD-20260715-001" in result.err
    assert site.spooled() == [f"{BATCH}.age", f"{BATCH}.arrival.json"]
    assert (site.spool / f"{BATCH}.age").read_bytes() == ENVELOPE
    record = json.loads((site.spool / f"{BATCH}.arrival.json").read_text())
    assert record["channel"] == "dvd" and record["tenant"] == TENANT
    assert record["sha256"] == _sha(ENVELOPE) and record["size"] == len(ENVELOPE)
    assert record["source"]["serials"] == ["DVD-20260715-001"]
    assert record["source"]["labels"] == ["20260715_7F3KQ2"]
    assert record["source"]["image_sha256s"] == [_sha(image.read_bytes())]
    [event] = site.audit("dvd_imported")
    assert event["batch"] == BATCH and event["tenant"] == TENANT
    assert event["serials"] == ["DVD-20260715-001"] and event["size_bytes"] == len(ENVELOPE)
    assert event["sha256"] == _sha(ENVELOPE) and event["actor"]
    assert event["already_present"] is False


def test_split_set_is_reassembled_in_part_order(site: Site, tmp_path: Path) -> None:
    """Three discs given out of order are verified and streamed back together in part order."""
    images = disc_set(tmp_path / "discs", parts=3)
    result = _import(site, images[2], images[0], images[1])
    assert result.code == 0, result.err
    assert (site.spool / f"{BATCH}.age").read_bytes() == ENVELOPE
    [event] = site.audit("dvd_imported")
    assert event["serials"] == ["DVD-20260715-001", "DVD-20260715-002", "DVD-20260715-003"]


def test_directory_of_images_is_a_split_set(site: Site, tmp_path: Path) -> None:
    """A directory holding every image of a split set imports like the images themselves."""
    disc_set(tmp_path / "discs", parts=2)
    result = _import(site, tmp_path / "discs")
    assert result.code == 0, result.err
    assert (site.spool / f"{BATCH}.age").read_bytes() == ENVELOPE


def test_mounted_disc_directory_is_imported(site: Site, tmp_path: Path) -> None:
    """The files of a mounted (or copied) disc import without an image; no image hash is kept."""
    mounted = tmp_path / "mnt"
    mounted.mkdir()
    for name, data in disc_files(ENVELOPE, {f"{BATCH}.age": ENVELOPE}).items():
        (mounted / name).write_bytes(data)
    result = _import(site, mounted)
    assert result.code == 0, result.err
    record = json.loads((site.spool / f"{BATCH}.arrival.json").read_text())
    assert record["source"]["image_sha256s"] == [] and record["source"]["labels"] == []


def test_joliet_only_image_is_read(site: Site, tmp_path: Path) -> None:
    """An image without UDF is read through its Joliet names."""
    [image] = disc_set(tmp_path / "discs", udf=False)
    assert _import(site, image).code == 0
    assert (site.spool / f"{BATCH}.age").read_bytes() == ENVELOPE


def test_same_disc_twice_is_an_idempotent_success(site: Site, tmp_path: Path) -> None:
    """Importing a batch already in the spool with the same SHA-256 succeeds and changes nothing."""
    [image] = disc_set(tmp_path / "discs")
    assert _import(site, image).code == 0
    before = (site.spool / f"{BATCH}.arrival.json").read_bytes()
    again = _import(site, image)
    assert again.code == 0, again.err
    assert again.out == f"{BATCH}\n" and "already imported" in again.err
    assert (site.spool / f"{BATCH}.arrival.json").read_bytes() == before
    assert [e["already_present"] for e in site.audit("dvd_imported")] == [False, True]


def test_production_envelope_opens_after_import_and_shows_opened(
    site: Site, tmp_path: Path
) -> None:
    """A work-factor-18 batch imported from disc opens with its passphrase; batches shows it."""
    envelope = sealed_envelope(OTHER, work_factor=18)
    [image] = disc_set(tmp_path / "discs", envelope, batch=OTHER)
    assert _import(site, image).code == 0
    listed = site.run("batches")
    assert listed.code == 0, listed.err
    [row] = [json.loads(line) for line in listed.out.splitlines()]
    assert row["state"] == "arrived" and row["channel"] == "dvd"
    staff = site.run(
        "staff", "add", "tanaka", "--role", "handler", "--password-fd", "{fd}", secret=PASSWORD
    )
    assert staff.code == 0, staff.err
    opened = run(
        "lgwan-gateway", "--config", site.root / "gateway.toml", "open", OTHER, "--as", "tanaka",
        "--password-fd", "{pw}", "--passphrase-fd", "{fd}", "--via", "hand",
        cwd=site.root, secrets={"pw": PASSWORD, "fd": SECRET},
    )  # fmt: skip
    assert opened.code == 0, opened.err
    assert (site.root / "work" / OTHER / "print.csv").is_file()
    [row] = [json.loads(line) for line in site.run("batches").out.splitlines()]
    assert row["state"] == "opened"


# -- refusals -------------------------------------------------------------------------------


def _replace(name: str, data: bytes) -> Tamper:
    def edit(files: Files) -> None:
        files[name] = data

    return edit


def _flip_envelope(files: Files) -> None:
    name = next(n for n in files if ".age" in n)
    data = bytearray(files[name])
    data[len(data) // 2] ^= 0x01
    files[name] = bytes(data)


def _add_unlisted(files: Files) -> None:
    files["autorun.inf"] = b"[autorun]\r\nopen=evil.exe\r\n"


def test_sha256sums_mismatch_is_refused(site: Site, tmp_path: Path) -> None:
    """A file that differs from SHA256SUMS (a damaged README) refuses the whole disc."""
    [image] = disc_set(tmp_path / "d", tamper={1: _replace("README.txt", b"changed")})
    _refused(site, _import(site, image), "README.txt does not match SHA256SUMS")


def test_damaged_envelope_piece_is_refused_mid_stream(site: Site, tmp_path: Path) -> None:
    """One flipped bit in an envelope piece is caught as it streams; no .part is left behind."""
    images = disc_set(tmp_path / "d", parts=2, tamper={2: _flip_envelope})
    _refused(site, _import(site, *images), f"{BATCH}.age.002 does not match SHA256SUMS")


def test_unlisted_file_on_the_disc_is_refused(site: Site, tmp_path: Path) -> None:
    """A file on the disc that SHA256SUMS does not list refuses the disc."""
    [image] = disc_set(tmp_path / "d", tamper={1: _add_unlisted})
    _refused(site, _import(site, image), "autorun.inf is on the disc but not listed")


def test_missing_part_is_refused_naming_it(site: Site, tmp_path: Path) -> None:
    """A split set with a part missing is refused, saying which part."""
    images = disc_set(tmp_path / "d", parts=3)
    _refused(site, _import(site, images[0], images[2]), "part(s) 2 missing")


def test_duplicate_part_is_refused(site: Site, tmp_path: Path) -> None:
    """The same part given twice (two copies of disc 1) is refused, naming both."""
    images = disc_set(tmp_path / "d", parts=2)
    copy = shutil.copy(images[0], tmp_path / "copy-of-1.iso")
    _refused(site, _import(site, images[0], Path(copy), images[1]), "part 1 of 2 is given twice")


def test_part_of_another_batch_is_refused(site: Site, tmp_path: Path) -> None:
    """A disc from another batch's set cannot complete this one."""
    ours = disc_set(tmp_path / "a", parts=2)
    theirs = disc_set(tmp_path / "b", sealed_envelope(OTHER), batch=OTHER, parts=2)
    _refused(site, _import(site, ours[0], theirs[1]), f"holds batch {OTHER}, not {BATCH}")


def test_part_of_another_set_of_the_same_batch_is_refused(site: Site, tmp_path: Path) -> None:
    """Discs of two burns of the same batch with different envelopes do not mix."""
    ours = disc_set(tmp_path / "a", parts=2)
    reburn = disc_set(tmp_path / "b", sealed_envelope(BATCH), parts=2)
    _refused(site, _import(site, ours[0], reburn[1]), "belongs to another disc set")


def test_foreign_disc_is_refused(site: Site, tmp_path: Path) -> None:
    """An image without DISC.json (someone's photo disc) is refused as foreign."""
    photo = {"IMG_0001.JPG": b"\xff\xd8\xff" + bytes(100)}
    image = write_iso(tmp_path / "photos.iso", photo, "PHOTOS")
    _refused(site, _import(site, image), "no DISC.json: not a disc written by lgwan-client dvd")


def test_subdirectory_on_the_disc_is_refused(site: Site, tmp_path: Path) -> None:
    """Discs hold files at their root only; an image with a directory is refused."""
    files = disc_files(ENVELOPE, {f"{BATCH}.age": ENVELOPE})
    image = write_iso(tmp_path / "d.iso", files, "KAIGO_7F3KQ2", subdir="extra")
    _refused(site, _import(site, image), "unexpected directory or link 'extra'")


def test_link_in_a_mounted_disc_is_refused(site: Site, tmp_path: Path) -> None:
    """A symlink among a mounted disc's files (pointing anywhere) refuses the disc."""
    mounted = tmp_path / "mnt"
    mounted.mkdir()
    for name, data in disc_files(ENVELOPE, {f"{BATCH}.age": ENVELOPE}).items():
        (mounted / name).write_bytes(data)
    (mounted / "passwd").symlink_to("/etc/passwd")
    _refused(site, _import(site, mounted), "unexpected directory or link 'passwd'")


def test_file_that_is_not_an_image_is_refused(site: Site, tmp_path: Path) -> None:
    """A file given as an image that is no ISO 9660 image is refused with that reason."""
    bogus = tmp_path / "bogus.iso"
    bogus.write_bytes(b"not an image" * 1000)
    _refused(site, _import(site, bogus), "not a readable ISO 9660 image")


def _contents(envelope: bytes) -> Callable[[Path], list[Path]]:
    return lambda out: disc_set(out, envelope)


@pytest.mark.parametrize(
    ("content", "words"),
    [
        ("番号,氏名\r\n1,山田\r\n".encode("cp932") * 100, "not an age file"),
        (x25519_file(), "not passphrase-encrypted"),
        (sealed_envelope(BATCH, work_factor=9), "below the minimum"),
        (ENVELOPE[: PAYLOAD_START + ENCRYPTED_CHUNK_SIZE + 10], "truncated"),
    ],
    ids=["plaintext-csv", "x25519", "low-work-factor", "truncated"],
)
def test_consistent_disc_with_a_bad_envelope_is_refused(
    site: Site, tmp_path: Path, content: bytes, words: str
) -> None:
    """A disc whose checksums all agree but whose envelope breaks a quarantine rule is refused."""
    [image] = disc_set(tmp_path / "d", content)
    result = _import(site, image)
    _refused(site, result, words)
    assert "fails the envelope check" in result.err


def test_seven_zip_disc_is_refused_with_a_hint(site: Site, tmp_path: Path) -> None:
    """A 7z disc (for contractors without our tools) is refused, pointing to 7-Zip."""
    [image] = disc_set(tmp_path / "d", kind="7z")
    result = _import(site, image)
    _refused(site, result, "is a 7z disc")
    assert "7-Zip" in result.err and "passphrase" in result.err


def test_same_batch_id_with_different_content_is_refused(site: Site, tmp_path: Path) -> None:
    """A second disc claiming a spooled batch id with another envelope never overwrites it."""
    [first] = disc_set(tmp_path / "a")
    assert _import(site, first).code == 0
    [second] = disc_set(tmp_path / "b", sealed_envelope(BATCH))
    result = _import(site, second)
    assert result.code == 1 and "different SHA-256" in result.err
    assert (site.spool / f"{BATCH}.age").read_bytes() == ENVELOPE
    assert len(site.audit("dvd_refused")) == 1


@pytest.mark.parametrize("tenant", ["Shinjuku", "a", "../x", "x" * 33])
def test_invalid_tenant_is_a_usage_error(site: Site, tmp_path: Path, tenant: str) -> None:
    """A tenant name outside ^[a-z][a-z0-9-]{1,31}$ is refused before anything is read."""
    result = _import(site, tmp_path / "nothing.iso", tenant=tenant)
    assert result.code == 2 and "invalid tenant" in result.err


def test_print_site_without_audit_log_is_a_configuration_error(site: Site, tmp_path: Path) -> None:
    """Without the audit log ``init`` creates, dvd-import refuses to run (exit 78)."""
    [image] = disc_set(tmp_path / "d")
    (site.root / "audit" / "audit.jsonl").unlink()
    result = _import(site, image)
    assert result.code == 78 and "lgwan-gateway init" in result.err
    assert site.spooled() == []


# -- DISC.json and SHA256SUMS, hostile (in-process) ------------------------------------------


def _doc(**changes: object) -> bytes:
    doc = json.loads(disc_files(ENVELOPE, {f"{BATCH}.age": ENVELOPE})["DISC.json"])
    doc.update(changes)
    return json.dumps(doc).encode()


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (b"not json", "not JSON"),
        (_doc(format="lgwan-dvd/v2"), "unsupported format"),
        (_doc(batch_id="../../etc"), "not a batch id"),
        (_doc(notice_type="JUMIN"), "disagree"),
        (_doc(serial="DVD 1"), "serial"),
        (_doc(part=3, parts=2), "part and parts"),
        (_doc(envelope_sha256="X" * 64), "envelope_sha256"),
        (_doc(files=[{"name": "../evil", "size": 1, "sha256": "0" * 64}]), "unsafe file name"),
        (_doc(files=[{"name": "CON.age", "size": 1, "sha256": "0" * 64}]), "unsafe file name"),
        (_doc(kind="zip"), "kind"),
        (_doc(extra=1), "unknown ['extra']"),
        (_doc(created_at="2026-07-15T10:00:00"), "UTC offset"),
        (_doc(envelope_size=1.5), "non-integer"),
    ],
)
def test_hostile_disc_manifest_is_refused(data: bytes, words: str) -> None:
    """Every malformed or unsafe DISC.json field is refused with a reason naming it."""
    with pytest.raises(DiscError, match=r"DISC\.json is invalid") as caught:
        parse_disc_manifest(data, "disc.iso")
    assert words in str(caught.value)


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (b"", "1 to 1000"),
        (f"{'0' * 64}  ../etc/passwd\n".encode(), "unsafe file name"),
        (f"{'0' * 64}  a\\b\n".encode(), "unsafe file name"),
        (f"{'0' * 64} nospace\n".encode(), "is not"),
        (f"{'0' * 63}  short\n".encode(), "is not"),
        (f"{'0' * 64}  a.txt\n{'1' * 64}  a.txt\n".encode(), "twice"),
        (b"\xff\xfe", "not UTF-8"),
    ],
)
def test_hostile_sha256sums_is_refused(data: bytes, words: str) -> None:
    """SHA256SUMS lines that are malformed, repeated or name unsafe paths are refused."""
    with pytest.raises(DiscError, match="SHA256SUMS") as caught:
        parse_sums(data, "disc.iso")
    assert words in str(caught.value)


def test_sha256sums_accepts_the_binary_marker_and_crlf() -> None:
    """GNU's `*name` binary marker and CRLF line ends parse to the same entries."""
    digest = "a" * 64
    assert parse_sums(f"{digest} *x.age\r\n{digest.upper()}  y\n".encode(), "d") == {
        "x.age": digest,
        "y": digest,
    }


# -- batches --------------------------------------------------------------------------------


def test_batches_lists_json_lines_with_jst_times(site: Site, tmp_path: Path) -> None:
    """Off a terminal, batches prints one JSON object per batch with a +09:00 arrival time."""
    assert site.run("batches").out == ""
    [image] = disc_set(tmp_path / "d")
    assert _import(site, image).code == 0
    result = site.run("batches")
    assert result.code == 0, result.err
    [row] = [json.loads(line) for line in result.out.splitlines()]
    assert row["batch_id"] == BATCH and row["tenant"] == TENANT and row["state"] == "arrived"
    assert row["size"] == len(ENVELOPE) and row["sha256"] == _sha(ENVELOPE)
    assert row["arrived_at"].endswith("+09:00")
    assert row["source"]["serials"] == ["DVD-20260715-001"]


def test_batches_prints_a_table_on_a_terminal(site: Site, tmp_path: Path) -> None:
    """On a TTY, batches draws a table with the state and the arrival time in JST."""
    [image] = disc_set(tmp_path / "d")
    assert _import(site, image).code == 0
    (site.root / "work" / BATCH).mkdir(parents=True)
    controller, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 160, 0, 0))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LGWAN_", "COLUMNS"))}
    done = subprocess.run(
        [BIN / "lgwan-gateway", "--config", site.root / "gateway.toml", "batches"],
        stdin=subprocess.DEVNULL,
        stdout=terminal,
        stderr=subprocess.PIPE,
        env=env,
        timeout=60,
        check=False,
    )
    os.close(terminal)
    chunks = []
    while True:
        try:
            chunk = os.read(controller, 65536)
        except OSError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(controller)
    text = b"".join(chunks).decode()
    assert done.returncode == 0, done.stderr
    assert BATCH in text and "opened" in text and "JST" in text and "{" not in text
