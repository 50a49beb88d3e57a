"""``lgwan-client dvd`` as a subprocess: output, exit codes, and the images in xorriso and 7-Zip."""

import hashlib
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from pypdf import PdfReader

from envelope import passphrase
from tests.conftest import CliRunner

LINE_RE = re.compile(r"^(DVD-\d{8}-\d{3})  ([0-9a-f]{64})  (/.+\.iso)$")
CSV = "番号,氏名\r\n1,山田\r\n2,佐藤\r\n".encode("cp932")
XORRISO = shutil.which("xorriso")
SEVEN = shutil.which("7z") or shutil.which("7zz")
needs_xorriso = pytest.mark.skipif(XORRISO is None, reason="xorriso is not installed")
needs_7zip = pytest.mark.skipif(
    SEVEN is None, reason="7-Zip (Debian 7zip: 7z/7zz) is not installed"
)


def _setup(
    root: Path, client: CliRunner, *, split: int | None = None, blob: bytes = b""
) -> tuple[str, str]:
    """Config (work factor 10), ward key, one sealed batch; returns batch id and passphrase."""
    extra = f"[dvd]\nsplit_bytes = {split}\n" if split else ""
    (root / "client.toml").write_text(f"[seal]\nwork_factor = 10\n{extra}", encoding="utf-8")
    assert client("--config", "client.toml", "keygen").code == 0
    (root / "介護保険料.csv").write_bytes(CSV)
    files = ["介護保険料.csv"]
    if blob:
        (root / "layout.bin").write_bytes(blob)
        files.append("layout.bin")
    done = client("--config", "client.toml", "seal", *files, "--notice-type", "KAIGO")
    assert done.code == 0, done.err
    batch = done.out.strip()
    notice = root / "notices" / f"{batch}.notice.pdf"
    text = "\n".join(p.extract_text() or "" for p in PdfReader(notice).pages)
    found = re.search(r"^Passphrase: (\S+)$", text, re.MULTILINE)
    assert found
    return batch, found.group(1)


def _lines(out: str) -> list[tuple[str, str, Path]]:
    rows = []
    for line in out.splitlines():
        match = LINE_RE.fullmatch(line)
        assert match, line
        rows.append((match.group(1), match.group(2), Path(match.group(3))))
    return rows


def _extract(image: Path, dest: Path) -> None:
    """Extract an image with xorriso (the reference reader here)."""
    assert XORRISO is not None
    done = subprocess.run(
        [XORRISO, "-osirrox", "on", "-indev", str(image), "-extract", "/", str(dest)],
        capture_output=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode()
    for path in dest.iterdir():
        path.chmod(0o600)


def test_prints_serial_sha_and_path_per_image(tmp_path: Path, client: CliRunner) -> None:
    """dvd exits 0 and prints '<serial>  <sha256>  <path>' for the one verified image."""
    batch, _ = _setup(tmp_path, client)
    done = client("--config", "client.toml", "dvd", batch, "--out", "dvd/b.iso")
    assert done.code == 0, done.err
    [(serial, sha, path)] = _lines(done.out)
    assert path == tmp_path / "dvd" / "b.iso"
    assert sha == hashlib.sha256(path.read_bytes()).hexdigest()
    assert serial.startswith("DVD-") and serial.endswith("-001")
    assert batch in done.err and "Traceback" not in done.err


@needs_xorriso
def test_xorriso_lists_and_extracts_the_age_image(tmp_path: Path, client: CliRunner) -> None:
    """xorriso lists the four files and extracts them; SHA256SUMS checks out."""
    batch, _ = _setup(tmp_path, client)
    done = client("--config", "client.toml", "dvd", f"outbox/{batch}.age", "--out", "b.iso")
    assert done.code == 0, done.err
    assert XORRISO is not None
    found = subprocess.run(
        [XORRISO, "-indev", "b.iso", "-find"], cwd=tmp_path, capture_output=True, check=False
    )
    listed = sorted(re.findall(r"'\./([^']+)'", found.stdout.decode()))
    assert listed == sorted([f"{batch}.age", "DISC.json", "README.txt", "SHA256SUMS"])
    _extract(tmp_path / "b.iso", tmp_path / "x")
    env = (tmp_path / "outbox" / f"{batch}.age").read_bytes()
    assert (tmp_path / "x" / f"{batch}.age").read_bytes() == env
    check = subprocess.run(
        ["sha256sum", "-c", "SHA256SUMS"], cwd=tmp_path / "x", capture_output=True, check=False
    )
    assert check.returncode == 0 and check.stdout.decode().count(": OK") == 3


@needs_7zip
def test_7zip_reads_the_iso(tmp_path: Path, client: CliRunner) -> None:
    """7-Zip lists the image's files (through UDF/Joliet) with their real names."""
    batch, _ = _setup(tmp_path, client)
    assert client("--config", "client.toml", "dvd", batch, "--out", "b.iso").code == 0
    assert SEVEN is not None
    done = subprocess.run([SEVEN, "l", "b.iso"], cwd=tmp_path, capture_output=True, check=False)
    assert done.returncode == 0
    for name in (f"{batch}.age", "README.txt", "DISC.json", "SHA256SUMS"):
        assert name in done.stdout.decode()


@needs_xorriso
@needs_7zip
def test_7z_disc_opens_in_7zip_with_the_passphrase_only(tmp_path: Path, client: CliRunner) -> None:
    """The 7z from the disc extracts with the passphrase; without it 7-Zip shows no file names."""
    blob = bytes(range(256)) * 64
    batch, secret = _setup(tmp_path, client, blob=blob)
    done = client(
        "--config", "client.toml", "dvd", batch, "--out", "z.iso",
        "--format", "7z", "--passphrase-fd", "{fd}", secret=secret,
    )  # fmt: skip
    assert done.code == 0, done.err
    assert secret not in done.out + done.err
    _extract(tmp_path / "z.iso", tmp_path / "disc")
    archive = tmp_path / "disc" / f"{batch}.7z"
    assert SEVEN is not None
    blind = subprocess.run(
        [SEVEN, "l", str(archive)], capture_output=True, stdin=subprocess.DEVNULL, check=False
    )
    wrong = subprocess.run([SEVEN, "l", "-pWRONG", str(archive)], capture_output=True, check=False)
    for attempt in (blind, wrong):
        assert attempt.returncode != 0
        shown = attempt.stdout.decode() + attempt.stderr.decode()
        assert "layout.bin" not in shown and "介護保険料" not in shown
    opened = subprocess.run(
        [SEVEN, "x", f"-p{secret}", f"-o{tmp_path / 'x'}", str(archive)],
        capture_output=True,
        check=False,
    )
    assert opened.returncode == 0, opened.stdout.decode()
    assert (tmp_path / "x" / "layout.bin").read_bytes() == blob
    assert (tmp_path / "x" / "介護保険料.csv").read_bytes() == CSV
    check = subprocess.run(
        ["sha256sum", "-c", "SHA256SUMS"], cwd=tmp_path / "x", capture_output=True, check=False
    )
    assert check.returncode == 0 and check.stdout.decode().count(": OK") == 2


@needs_xorriso
def test_split_discs_rejoin_to_the_envelope(tmp_path: Path, client: CliRunner) -> None:
    """With split_bytes 2 MiB a ~3 MiB envelope becomes three images whose parts rejoin exactly."""
    blob = hashlib.sha256(b"split").digest() * 96_000  # ~3 MiB
    batch, _ = _setup(tmp_path, client, split=2 * 1024 * 1024, blob=blob)
    done = client("--config", "client.toml", "dvd", batch, "--out", "d/b.iso")
    assert done.code == 0, done.err
    rows = _lines(done.out)
    assert [p.name for _, _, p in rows] == ["b-1of3.iso", "b-2of3.iso", "b-3of3.iso"]
    assert len({serial for serial, _, _ in rows}) == 3
    joined = tmp_path / "joined"
    joined.mkdir()
    for i, (_, _, path) in enumerate(rows, 1):
        _extract(path, tmp_path / f"x{i}")
        part = tmp_path / f"x{i}" / f"{batch}.age.{i:03d}"
        shutil.copy(part, joined / part.name)
    rejoined = b"".join(p.read_bytes() for p in sorted(joined.iterdir()))
    assert rejoined == (tmp_path / "outbox" / f"{batch}.age").read_bytes()
    (joined / f"{batch}.age").write_bytes(rejoined)
    shutil.copy(tmp_path / "x2" / "SHA256SUMS", joined / "SHA256SUMS")
    check = subprocess.run(
        ["sha256sum", "-c", "--ignore-missing", "SHA256SUMS"],
        cwd=joined,
        capture_output=True,
        check=False,
    )
    assert check.returncode == 0 and f"{batch}.age: OK" in check.stdout.decode()


def test_serials_increase_across_runs(tmp_path: Path, client: CliRunner) -> None:
    """Two runs for the same batch get consecutive serials, never the same one."""
    batch, _ = _setup(tmp_path, client)
    first = client("--config", "client.toml", "dvd", batch, "--out", "a.iso")
    second = client("--config", "client.toml", "dvd", batch, "--out", "b.iso")
    assert first.code == second.code == 0
    [(s1, _, _)] = _lines(first.out)
    [(s2, _, _)] = _lines(second.out)
    assert s1[:-3] == s2[:-3] and int(s2[-3:]) == int(s1[-3:]) + 1


def test_exit_codes(tmp_path: Path, client: CliRunner) -> None:
    """Usage 2, wrong passphrase 1 (nothing written), missing key 78, never sealed 1."""
    batch, secret = _setup(tmp_path, client)
    base = ("--config", "client.toml", "dvd", batch)
    bad_out = client(*base, "--out", "b.img")
    assert bad_out.code == 2 and "must end in .iso" in bad_out.err
    assert client(*base, "--out", "b.iso", "--format", "zip").code == 2
    no_fd = client(*base, "--out", "b.iso", "--format", "7z")
    assert no_fd.code == 2 and "--passphrase-fd" in no_fd.err
    other = passphrase.generate()
    wrong = client(
        *base, "--out", "b.iso", "--format", "7z", "--passphrase-fd", "{fd}", secret=other
    )
    assert wrong.code == 1 and "does not open" in wrong.err and other not in wrong.err
    assert wrong.out == "" and "Traceback" not in wrong.err
    assert sorted(p.name for p in tmp_path.glob("*.iso")) == []
    assert not list(tmp_path.glob(".dvd-*")) and not list(tmp_path.glob(".*.part"))
    (tmp_path / "keys" / "ward_ed25519").rename(tmp_path / "keys" / "moved")
    missing = client(*base, "--out", "b.iso")
    assert missing.code == 78 and "keygen" in missing.err
    (tmp_path / "keys" / "moved").rename(tmp_path / "keys" / "ward_ed25519")
    (tmp_path / "ledger" / "ledger.jsonl").unlink()
    unsealed = client(*base, "--out", "b.iso")
    assert unsealed.code == 1 and "never sealed" in unsealed.err
    assert not (tmp_path / "b.iso").exists()
    assert secret not in "".join(r.err for r in (wrong, missing, unsealed))
