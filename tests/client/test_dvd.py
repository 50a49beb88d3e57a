"""``lgwan-client dvd`` in-process: image layout, read-back, split, 7z, serials, failures."""

import hashlib
import io
import json
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import py7zr
import pycdlib
import pytest
from py7zr.exceptions import PasswordRequired
from pypdf import PdfReader

from client import config as config_mod
from client import dvd, dvd_7z, dvd_iso, dvd_layout, identity, ledger, seal
from client.config import ClientConfig
from client.errors import ClientError, ConfigError
from envelope import passphrase

MiB = 1024 * 1024
CSV = "番号,氏名\r\n1,山田\r\n2,佐藤\r\n".encode("cp932")


@dataclass(frozen=True)
class Sealed:
    """A batch sealed in ``root`` with the ward's key, as ``seal`` leaves it."""

    root: Path
    config: ClientConfig
    batch: str
    envelope: Path
    secret: str
    files: dict[str, bytes]


def _sealed(
    root: Path, files: dict[str, bytes] | None = None, *, split: int | None = None, key: bool = True
) -> Sealed:
    text = "[seal]\nwork_factor = 10\n" + (f"[dvd]\nsplit_bytes = {split}\n" if split else "")
    (root / "client.toml").write_text(text, encoding="utf-8")
    cfg = config_mod.load(str(root / "client.toml"))
    if key:
        identity.generate(cfg.path(cfg.identity.private_key), "ward@test")
    files = files or {"介護保険料.csv": CSV}
    (root / "in").mkdir()
    for name, data in files.items():
        (root / "in" / name).write_bytes(data)
    result = seal.seal([root / "in" / n for n in files], "KAIGO", cfg)
    text = "\n".join(p.extract_text() or "" for p in PdfReader(result.notice_path).pages)
    found = re.search(r"^Passphrase: (\S+)$", text, re.MULTILINE)
    assert found
    batch = result.manifest.batch_id
    return Sealed(root, cfg, batch, result.envelope_path, found.group(1), files)


def _read(iso: Any, **path: str) -> bytes:
    sink = io.BytesIO()
    iso.get_file_from_iso_fp(sink, **path)
    return sink.getvalue()


def _disc(image: Path) -> dict[str, bytes]:
    """Every root file of an image, read through UDF; Joliet and ISO 9660 must agree."""
    iso = pycdlib.PyCdlib()
    iso.open(str(image))
    try:
        names = [bytes(c.file_identifier()).decode() for c in iso.list_children(udf_path="/")]
        files = {n: _read(iso, udf_path="/" + n) for n in names}
        for name, data in files.items():
            assert _read(iso, joliet_path="/" + name) == data
            assert _read(iso, iso_path="/" + dvd_layout.iso9660_name(name)) == data
    finally:
        iso.close()
    return files


def _events(s: Sealed, event: str) -> list[dict[str, object]]:
    book = s.config.path(s.config.ledger.path)
    return [e for e in ledger.entries(book) if e["event"] == event]


def _leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


def test_age_image_holds_the_envelope_in_all_three_trees(tmp_path: Path) -> None:
    """The image lists envelope, README, DISC.json, SHA256SUMS in ISO 9660, Joliet and UDF."""
    s = _sealed(tmp_path)
    result = dvd.make_dvd(s.batch, tmp_path / "dvd" / "b.iso", s.config)
    [disc] = result.discs
    files = _disc(disc.path)
    envelope = s.envelope.read_bytes()
    assert sorted(files) == sorted([f"{s.batch}.age", "README.txt", "DISC.json", "SHA256SUMS"])
    assert files[f"{s.batch}.age"] == envelope
    sums = {
        ln.split("  ")[1]: ln.split("  ")[0] for ln in files["SHA256SUMS"].decode().splitlines()
    }
    assert sums == {n: hashlib.sha256(files[n]).hexdigest() for n in files if n != "SHA256SUMS"}
    assert disc.sha256 == hashlib.sha256(disc.path.read_bytes()).hexdigest()
    assert disc.path.stat().st_mode & 0o777 == 0o600


def test_disc_json_describes_the_batch_and_disc(tmp_path: Path) -> None:
    """DISC.json is canonical JSON naming batch, notice type, serial, part and envelope hash."""
    s = _sealed(tmp_path)
    result = dvd.make_dvd(s.batch, tmp_path / "b.iso", s.config)
    raw = _disc(result.discs[0].path)["DISC.json"]
    doc = json.loads(raw)
    assert (
        raw == json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    )
    envelope = s.envelope.read_bytes()
    assert doc["format"] == "lgwan-dvd/v1" and doc["kind"] == "age"
    assert (doc["batch_id"], doc["notice_type"]) == (s.batch, "KAIGO")
    assert (doc["part"], doc["parts"], doc["serial"]) == (1, 1, result.discs[0].serial)
    assert doc["envelope_sha256"] == hashlib.sha256(envelope).hexdigest()
    assert doc["envelope_size"] == len(envelope)
    assert [f["name"] for f in doc["files"]] == [f"{s.batch}.age", "README.txt"]


def test_readme_is_bilingual_utf8_with_crlf(tmp_path: Path) -> None:
    """README.txt is UTF-8 with CRLF only, in Japanese and English, naming batch and serial."""
    s = _sealed(tmp_path)
    result = dvd.make_dvd(s.batch, tmp_path / "b.iso", s.config)
    raw = _disc(result.discs[0].path)["README.txt"]
    text = raw.decode("utf-8")
    assert raw.count(b"\n") == raw.count(b"\r\n") > 10
    assert "パスフレーズ" in text and "passphrase" in text
    assert s.batch in text and result.discs[0].serial in text
    assert "lgwan-gateway dvd-import" in text and "age -d" in text


def test_volume_label_is_set_in_every_descriptor(tmp_path: Path) -> None:
    """The primary, Joliet and UDF volume labels are all the batch's ≤16-character label."""
    s = _sealed(tmp_path)
    result = dvd.make_dvd(s.batch, tmp_path / "b.iso", s.config)
    label = dvd_layout.volume_label(s.batch, 1, 1)
    assert label == "KAIGO_" + s.batch[-6:] and result.discs[0].label == label
    iso = pycdlib.PyCdlib()
    iso.open(str(result.discs[0].path))
    try:
        assert bytes(iso.pvd.volume_identifier).decode().rstrip() == label
        assert bytes(iso.joliet_vd.volume_identifier).decode("utf-16-be").rstrip() == label
        assert label.encode() in bytes(iso.udf_main_descs.logical_volumes[0].logical_vol_ident)
    finally:
        iso.close()


@pytest.mark.parametrize(
    ("batch", "part", "parts", "label"),
    [
        ("20260715-KAIGO-7F3KQ2", 1, 1, "KAIGO_7F3KQ2"),
        ("20260715-KAIGO-7F3KQ2", 2, 3, "KAIGO_7F3KQ2_2"),
        ("20260715-JUMINZEITSUCHI-7F3KQ2", 1, 1, "20260715_7F3KQ2"),
        ("20260715-JUMINZEITSUCHI-7F3KQ2", 12, 12, "260715_7F3KQ2_12"),
    ],
)
def test_volume_label_fits_16_characters(batch: str, part: int, parts: int, label: str) -> None:
    """Labels come from notice type and suffix, else date and suffix, always ≤ 16 characters."""
    assert dvd_layout.volume_label(batch, part, parts) == label
    assert len(label) <= dvd_layout.LABEL_MAX


@pytest.mark.parametrize(
    ("name", "iso_name"),
    [
        ("20260715-KAIGO-7F3KQ2.age", "20260715_KAIGO_7F3KQ2.AGE;1"),
        ("20260715-KAIGO-7F3KQ2.age.001", "20260715_KAIGO_7F3KQ2_AGE.001;1"),
        ("SHA256SUMS", "SHA256SUMS.;1"),
        ("20260715-JUMINZEITSUCHIABC-7F3KQ2.age.002", "20260715_JUMINZEITSUCHIABC_.002;1"),
    ],
)
def test_iso9660_names_are_level_3_d_characters(name: str, iso_name: str) -> None:
    """ISO 9660 names use A-Z0-9_ only, one dot, at most 30 characters plus ';1'."""
    assert dvd_layout.iso9660_name(name) == iso_name
    assert len(iso_name.replace(".", "").removesuffix(";1")) <= dvd_layout.ISO9660_NAME_MAX


def test_split_images_reassemble_to_the_envelope(tmp_path: Path) -> None:
    """With split_bytes 1 MiB a larger envelope spans FILE-NofM.iso discs that rejoin exactly."""
    blob = hashlib.sha256(b"x").digest() * 22_000  # ~700 KB of incompressible-looking data
    s = _sealed(tmp_path, {"layout.bin": blob}, split=MiB)
    result = dvd.make_dvd(s.batch, tmp_path / "out" / "b.iso", s.config)
    parts = len(result.discs)
    assert parts == 3
    assert [d.path.name for d in result.discs] == [f"b-{i}of3.iso" for i in (1, 2, 3)]
    envelope = s.envelope.read_bytes()
    whole = hashlib.sha256(envelope).hexdigest()
    joined = b""
    for i, disc in enumerate(result.discs, 1):
        assert disc.path.stat().st_size <= MiB
        files = _disc(disc.path)
        doc = json.loads(files["DISC.json"])
        assert (doc["part"], doc["parts"], doc["envelope_sha256"]) == (i, 3, whole)
        assert f"{whole}  {s.batch}.age" in files["SHA256SUMS"].decode().splitlines()
        assert disc.label == f"KAIGO_{s.batch[-6:]}_{i}"
        joined += files[f"{s.batch}.age.{i:03d}"]
    assert joined == envelope
    assert _leftovers(tmp_path / "out") == sorted(d.path.name for d in result.discs)


def test_dvd_created_entry_records_serials_and_hashes(tmp_path: Path) -> None:
    """One signed dvd-created entry names batch, kind, parts, serials and each image's SHA-256."""
    s = _sealed(tmp_path)
    result = dvd.make_dvd(s.batch, tmp_path / "b.iso", s.config)
    [entry] = _events(s, "dvd-created")
    assert entry == {k: result.entry[k] for k in entry}
    assert (entry["batch"], entry["kind"], entry["parts"]) == (s.batch, "age", 1)
    assert entry["serials"] == [result.discs[0].serial]
    assert entry["discs"] == [
        {
            "serial": result.discs[0].serial,
            "label": result.discs[0].label,
            "part": 1,
            "image": "b.iso",
            "size": result.discs[0].size,
            "sha256": result.discs[0].sha256,
        }
    ]
    assert entry["envelope_sha256"] == hashlib.sha256(s.envelope.read_bytes()).hexdigest()
    key = ledger.load_key(s.config.path(s.config.identity.private_key), "k")
    assert ledger.Ledger.verify(s.config.path(s.config.ledger.path), key.public_key()).ok


def test_serials_increase_and_never_repeat(tmp_path: Path) -> None:
    """Sequential and concurrent runs get distinct serials, increasing within the day."""
    s = _sealed(tmp_path)
    first = dvd.make_dvd(s.batch, tmp_path / "a.iso", s.config).discs[0].serial
    second = dvd.make_dvd(s.batch, tmp_path / "b.iso", s.config).discs[0].serial
    got: list[str] = []
    errors: list[BaseException] = []

    def run(name: str) -> None:
        try:
            got.extend(d.serial for d in dvd.make_dvd(s.batch, tmp_path / name, s.config).discs)
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(f"t{i}.iso",)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    serials = [first, second, *got]
    assert len(set(serials)) == 5
    assert re.fullmatch(r"DVD-\d{8}-001", first) and second.endswith("-002")
    assert sorted(int(x[-3:]) for x in serials) == [1, 2, 3, 4, 5]


def test_next_serials_ignore_other_days_and_prefixes() -> None:
    """Serials continue after the highest of the same prefix and day only."""
    from datetime import datetime

    entries = [
        {"event": "dvd-created", "serials": ["DVD-20260715-007", "DVD-20260715-003"]},
        {"event": "dvd-created", "serials": ["DVD-20260714-042", "X-20260715-050"]},
        {"event": "sealed", "serials": ["DVD-20260715-099"]},
    ]
    day = datetime(2026, 7, 15, 9, 0)
    assert dvd.next_serials(entries, "DVD", day, 2) == ["DVD-20260715-008", "DVD-20260715-009"]
    assert dvd.next_serials([], "DVD", day, 1) == ["DVD-20260715-001"]


def test_7z_archive_opens_only_with_the_passphrase(tmp_path: Path) -> None:
    """The disc's 7z holds the files and SHA256SUMS; without a password no names show."""
    s = _sealed(tmp_path, {"介護保険料.csv": CSV, "layout.bin": bytes(range(256)) * 40})
    typed = s.secret.lower().replace("-", " ")
    result = dvd.make_dvd(s.batch, tmp_path / "z.iso", s.config, kind="7z", secret=typed)
    files = _disc(result.discs[0].path)
    archive = files[f"{s.batch}.7z"]
    assert sorted(files) == sorted([f"{s.batch}.7z", "README.txt", "DISC.json", "SHA256SUMS"])
    with pytest.raises(PasswordRequired), py7zr.SevenZipFile(io.BytesIO(archive)) as seven:
        seven.getnames()
    with py7zr.SevenZipFile(io.BytesIO(archive), password=s.secret) as seven:
        assert sorted(seven.getnames()) == sorted([*s.files, "SHA256SUMS"])
        seven.extractall(path=tmp_path / "x")
    for name, data in s.files.items():
        assert (tmp_path / "x" / name).read_bytes() == data
    sums = (tmp_path / "x" / "SHA256SUMS").read_text(encoding="utf-8").splitlines()
    assert sorted(sums) == sorted(
        f"{hashlib.sha256(d).hexdigest()}  {n}" for n, d in s.files.items()
    )
    doc = json.loads(files["DISC.json"])
    assert doc["kind"] == "7z" and doc["envelope_sha256"] == hashlib.sha256(archive).hexdigest()
    assert doc["envelope_size"] == len(archive)
    [entry] = _events(s, "dvd-created")
    assert entry["archive_sha256"] == hashlib.sha256(archive).hexdigest()
    assert entry["envelope_sha256"] == hashlib.sha256(s.envelope.read_bytes()).hexdigest()
    assert _leftovers(tmp_path) == sorted(
        ["client.toml", "in", "keys", "ledger", "notices", "outbox", "x", "z.iso"]
    )


def test_7z_plaintext_is_private_and_removed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Plaintext copies sit in a 0700 directory as 0600 files and are gone afterwards."""
    s = _sealed(tmp_path)
    seen: list[tuple[int, int]] = []
    original = dvd_7z.build_archive

    def spy(files_dir: Path, *args: Any) -> None:
        seen.extend(
            (files_dir.stat().st_mode & 0o777, p.stat().st_mode & 0o777)
            for p in files_dir.iterdir()
        )
        seen.append((files_dir.parent.stat().st_mode & 0o777, 0))
        original(files_dir, *args)

    monkeypatch.setattr(dvd_7z, "build_archive", spy)
    dvd.make_dvd(s.batch, tmp_path / "o" / "z.iso", s.config, kind="7z", secret=s.secret)
    assert seen == [(0o700, 0o600), (0o700, 0)]
    assert _leftovers(tmp_path / "o") == ["z.iso"]


@pytest.mark.parametrize("wrong", ["typo", "other"])
def test_7z_wrong_passphrase_writes_nothing(tmp_path: Path, wrong: str) -> None:
    """A typo or another batch's passphrase exits 1 and leaves no image, temp dir or entry."""
    s = _sealed(tmp_path)
    secret = passphrase.generate()
    if wrong == "typo":
        secret = ("Z" if s.secret[0] != "Z" else "Y") + s.secret[1:]
    with pytest.raises(ClientError) as caught:
        dvd.make_dvd(s.batch, tmp_path / "o" / "z.iso", s.config, kind="7z", secret=secret)
    assert caught.value.exit_code == 1
    assert ("typo" if wrong == "typo" else "does not open") in str(caught.value)
    assert s.secret not in str(caught.value) and secret not in str(caught.value)
    assert _leftovers(tmp_path / "o") == []
    assert _events(s, "dvd-created") == []


def test_corrupted_image_fails_verification_and_is_removed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An image whose bytes differ from what was meant fails read-back: no image, no entry."""
    s = _sealed(tmp_path, split=MiB, files={"a.bin": hashlib.sha256(b"y").digest() * 22_000})
    envelope = s.envelope.read_bytes()
    original = dvd_iso.write_image
    calls: list[Path] = []

    def corrupt(path: Path, *args: Any, **kw: Any) -> int:
        planned = original(path, *args, **kw)
        calls.append(path)
        if len(calls) == 2:  # the second disc: the first one must be removed too
            data = bytearray(path.read_bytes())
            at = data.find(envelope[300_000:300_064])
            assert at > 0
            data[at] ^= 0xFF
            path.write_bytes(bytes(data))
        return planned

    monkeypatch.setattr(dvd_iso, "write_image", corrupt)
    with pytest.raises(ClientError, match="SHA-256 differs"):
        dvd.make_dvd(s.batch, tmp_path / "o" / "b.iso", s.config)
    assert _leftovers(tmp_path / "o") == []
    assert _events(s, "dvd-created") == []


def test_not_enough_space_is_refused_before_writing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With too little free space dvd exits 1 and writes nothing."""
    s = _sealed(tmp_path)

    class Usage:
        free = 1024

    monkeypatch.setattr(dvd.shutil, "disk_usage", lambda _p: Usage())
    with pytest.raises(ClientError, match="not enough space"):
        dvd.make_dvd(s.batch, tmp_path / "o" / "b.iso", s.config)
    assert _leftovers(tmp_path / "o") == []


def test_batch_never_sealed_with_the_key_is_refused(tmp_path: Path) -> None:
    """A batch sealed before the ward key existed has no ledger entry: refused, exit 1."""
    s = _sealed(tmp_path, key=False)
    identity.generate(s.config.path(s.config.identity.private_key), "ward@test")
    with pytest.raises(ClientError, match="never sealed") as caught:
        dvd.make_dvd(s.batch, tmp_path / "b.iso", s.config)
    assert caught.value.exit_code == 1
    assert not (tmp_path / "b.iso").exists()


def test_missing_ward_key_is_a_configuration_error(tmp_path: Path) -> None:
    """Without the ward's key the signed ledger cannot be written: ConfigError (exit 78)."""
    s = _sealed(tmp_path)
    s.config.path(s.config.identity.private_key).unlink()
    with pytest.raises(ConfigError) as caught:
        dvd.make_dvd(s.batch, tmp_path / "b.iso", s.config)
    assert caught.value.exit_code == 78


def test_envelope_changed_since_seal_is_refused(tmp_path: Path) -> None:
    """An envelope whose SHA-256 differs from the sealed entry is never put on a disc."""
    s = _sealed(tmp_path)
    data = bytearray(s.envelope.read_bytes())
    data[-1] ^= 1
    s.envelope.write_bytes(bytes(data))
    with pytest.raises(ClientError, match="differs from the one sealed"):
        dvd.make_dvd(s.batch, tmp_path / "o" / "b.iso", s.config)
    assert _leftovers(tmp_path / "o") == []


def test_existing_image_is_never_replaced(tmp_path: Path) -> None:
    """An existing FILE.iso is refused and left untouched."""
    s = _sealed(tmp_path)
    (tmp_path / "b.iso").write_bytes(b"keep")
    with pytest.raises(ClientError, match="already exists"):
        dvd.make_dvd(s.batch, tmp_path / "b.iso", s.config)
    assert (tmp_path / "b.iso").read_bytes() == b"keep"
    assert _events(s, "dvd-created") == []


@pytest.mark.parametrize(
    ("target", "out", "message"),
    [
        ("20200101-KAIGO-000000", "b.iso", "no such sealed batch"),
        ("notes.txt", "b.iso", "neither a batch id"),
        ("{batch}", "b.img", "must end in .iso"),
    ],
)
def test_usage_errors(tmp_path: Path, target: str, out: str, message: str) -> None:
    """A wrong batch, file or image name is a usage error (exit 2)."""
    s = _sealed(tmp_path)
    with pytest.raises(ClientError, match=message) as caught:
        dvd.make_dvd(target.format(batch=s.batch), tmp_path / out, s.config)
    assert caught.value.exit_code == 2


def test_range_view_streams_only_its_bytes(tmp_path: Path) -> None:
    """hash_ranges hashes each range and the whole file in one pass."""
    path = tmp_path / "p.bin"
    path.write_bytes(bytes(range(256)) * 10)
    ranges = dvd_layout.plan_ranges(2560, 1000)
    assert ranges == [(0, 1000), (1000, 1000), (2000, 560)]
    whole, parts = dvd_iso.hash_ranges(path, ranges)
    data = path.read_bytes()
    assert whole == hashlib.sha256(data).hexdigest()
    assert parts == [hashlib.sha256(data[o : o + n]).hexdigest() for o, n in ranges]


def test_image_over_the_size_limit_is_refused_before_writing(tmp_path: Path) -> None:
    """write_image refuses a layout larger than the limit and writes no byte."""
    target = tmp_path / "x.iso"
    target.touch()
    files = [dvd_layout.DiscFile.of_bytes("README.txt", b"x" * 4096)]
    with pytest.raises(ClientError, match="over 524288"):
        dvd_iso.write_image(target, "KAIGO_7F3KQ2", files, limit=512 * 1024)
    assert target.stat().st_size == 0


def test_stale_part_file_from_a_killed_run_is_replaced(tmp_path: Path) -> None:
    """A .FILE.iso.part left by a killed run does not block the next run and is gone after."""
    s = _sealed(tmp_path)
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / ".b.iso.part").write_bytes(b"half an image")
    result = dvd.make_dvd(s.batch, tmp_path / "o" / "b.iso", s.config)
    assert _leftovers(tmp_path / "o") == ["b.iso"]
    assert _disc(result.discs[0].path)[f"{s.batch}.age"] == s.envelope.read_bytes()


def test_images_are_named_without_hard_links(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a file system without hard links (a FAT stick) the verified image is renamed instead."""
    s = _sealed(tmp_path)

    def no_links(*_args: object) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(dvd.os, "link", no_links)
    result = dvd.make_dvd(s.batch, tmp_path / "o" / "b.iso", s.config)
    assert _leftovers(tmp_path / "o") == ["b.iso"]
    assert (
        result.discs[0].sha256
        == hashlib.sha256((tmp_path / "o" / "b.iso").read_bytes()).hexdigest()
    )
