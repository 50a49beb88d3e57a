"""Ward → print site through the real CLIs: sample, seal, open (subprocesses)."""

import hashlib
import re
from pathlib import Path

import pytest
from pypdf import PdfReader

from tests.conftest import CliRunner, Result
from tests.gateway.custody_kit import HANDLER, CustodySite, make_site

BATCH_RE = re.compile(r"^\d{8}-KAIGO-[0-9A-Z]{6}$")


def _fast_config(root: Path, **seal: str) -> Path:
    """A client config with a low scrypt work factor so tests stay quick."""
    extra = "".join(f'{k} = "{v}"\n' for k, v in seal.items())
    path = root / "client.toml"
    path.write_text(f"[seal]\nwork_factor = 10\n{extra}", encoding="utf-8")
    return path


def _passphrase(notice: Path) -> str:
    text = "\n".join(p.extract_text() or "" for p in PdfReader(notice).pages)
    found = re.search(r"^Passphrase: (\S+)$", text, re.MULTILINE)
    assert found, "no Passphrase line in the notice"
    return found.group(1)


def _open(site: CustodySite, envelope: object, secret: str, *extra: object) -> Result:
    """``open`` at an initialised print site as handler tanaka; plaintext to its work dir."""
    return site.gateway(
        "open", envelope, "--as", HANDLER, "--password-fd", "{handler}",
        "--passphrase-fd", "{fd}", "--via", "hand", *extra, fd=secret,
    )  # fmt: skip


def _seal(client: CliRunner, root: Path, *files: str, config: Path | None = None) -> str:
    cfg = config or _fast_config(root)
    done = client("--config", cfg, "seal", *files, "--notice-type", "KAIGO")
    assert done.code == 0, done.err
    return done.out.strip()


@pytest.mark.slow
def test_70000_records_round_trip_byte_identical(tmp_path: Path, client: CliRunner) -> None:
    """A 70,000-record sample sealed at the default work factor opens byte-identical."""
    assert client("sample", "--records", "70000", "--seed", "7", "--out", "kaigo.csv").code == 0
    done = client("seal", "kaigo.csv", "--notice-type", "KAIGO")
    assert done.code == 0, done.err
    batch = done.out.strip()
    assert BATCH_RE.match(batch) and done.out == batch + "\n"
    secret = _passphrase(tmp_path / "notices" / f"{batch}.notice.pdf")
    assert secret not in done.out + done.err
    site = make_site(tmp_path)
    opened = _open(site, f"outbox/{batch}.age", secret)
    assert opened.code == 0, opened.err
    released = site.work / batch / "kaigo.csv"
    assert released.read_bytes() == (tmp_path / "kaigo.csv").read_bytes()
    assert (released.stat().st_mode & 0o777) == 0o600
    assert ((site.work / batch).stat().st_mode & 0o777) == 0o700


def test_binary_and_csv_files_round_trip(tmp_path: Path, client: CliRunner) -> None:
    """Several files (CSV, binary, Japanese names) come out identical; typing is forgiven."""
    (tmp_path / "介護保険料.csv").write_bytes("番号,氏名\r\n1,山田\r\n2,佐藤\r\n".encode("cp932"))
    blob = hashlib.sha256(b"seed").digest() * 70_000  # 2.2 MB, crosses many chunks
    (tmp_path / "layout.bin").write_bytes(blob)
    batch = _seal(client, tmp_path, "介護保険料.csv", "layout.bin")
    secret = _passphrase(tmp_path / "notices" / f"{batch}.notice.pdf")
    typed = secret.lower().replace("-", " ")
    site = make_site(tmp_path)
    done = _open(site, f"outbox/{batch}.age", typed)
    assert done.code == 0, done.err
    assert Path(done.out.strip()) == site.work / batch
    assert (site.work / batch / "layout.bin").read_bytes() == blob
    assert sorted(p.name for p in (site.work / batch).iterdir()) == [
        "layout.bin",
        "介護保険料.csv",
    ]


def test_wrong_passphrase_releases_nothing(tmp_path: Path, client: CliRunner) -> None:
    """A well-formed but wrong passphrase exits 1 with one line and leaves the out dir empty."""
    (tmp_path / "a.csv").write_text("h\r\n1\r\n", encoding="cp932")
    batch = _seal(client, tmp_path, "a.csv")
    from envelope import passphrase

    site = make_site(tmp_path)
    done = _open(site, f"outbox/{batch}.age", passphrase.generate())
    assert done.code == 1
    assert "passphrase does not open" in done.err and "Traceback" not in done.err
    assert list(site.work.iterdir()) == []


def test_typo_is_reported_before_any_work(tmp_path: Path, client: CliRunner) -> None:
    """A passphrase with one wrong character is refused as a typo and nothing is created."""
    (tmp_path / "a.csv").write_text("h\r\n1\r\n", encoding="cp932")
    batch = _seal(client, tmp_path, "a.csv")
    secret = _passphrase(tmp_path / "notices" / f"{batch}.notice.pdf")
    typo = ("Z" if secret[0] != "Z" else "Y") + secret[1:]
    site = make_site(tmp_path)
    done = _open(site, f"outbox/{batch}.age", typo)
    assert done.code == 1
    assert "typo" in done.err and secret not in done.err
    assert list(site.work.iterdir()) == []


def test_tampered_envelope_releases_nothing(tmp_path: Path, client: CliRunner) -> None:
    """Flipping one ciphertext byte makes open fail with exit 1 and no files left."""
    (tmp_path / "big.bin").write_bytes(bytes(range(256)) * 4096)
    batch = _seal(client, tmp_path, "big.bin")
    env = tmp_path / "outbox" / f"{batch}.age"
    data = bytearray(env.read_bytes())
    data[len(data) // 2] ^= 0x01
    env.write_bytes(bytes(data))
    secret = _passphrase(tmp_path / "notices" / f"{batch}.notice.pdf")
    site = make_site(tmp_path)
    done = _open(site, env, secret)
    assert done.code == 1
    assert "tampered" in done.err
    assert list(site.work.iterdir()) == []


def test_open_refuses_existing_batch_directory(tmp_path: Path, client: CliRunner) -> None:
    """A work directory already holding the batch: refused without a reason (it counts as
    opened), and with one still refused as existing; nothing changes either way."""
    (tmp_path / "a.csv").write_text("h\r\n1\r\n", encoding="cp932")
    batch = _seal(client, tmp_path, "a.csv")
    site = make_site(tmp_path)
    (site.work / batch).mkdir(parents=True)
    (site.work / batch / "keep.txt").write_text("earlier copy")
    secret = _passphrase(tmp_path / "notices" / f"{batch}.notice.pdf")
    done = _open(site, f"outbox/{batch}.age", secret)
    assert done.code == 1 and "needs a reason" in done.err
    done = _open(site, f"outbox/{batch}.age", secret, "--reason", "again")
    assert done.code == 1 and "already exists" in done.err
    assert [p.name for p in site.work.iterdir()] == [batch]
    assert (site.work / batch / "keep.txt").read_text() == "earlier copy"


def test_open_refuses_a_renamed_envelope(tmp_path: Path, client: CliRunner) -> None:
    """An envelope renamed to another batch id is refused as swapped."""
    (tmp_path / "a.csv").write_text("h\r\n1\r\n", encoding="cp932")
    batch = _seal(client, tmp_path, "a.csv")
    other = tmp_path / "outbox" / "20200101-KAIGO-000000.age"
    (tmp_path / "outbox" / f"{batch}.age").rename(other)
    secret = _passphrase(tmp_path / "notices" / f"{batch}.notice.pdf")
    site = make_site(tmp_path)
    done = _open(site, other, secret)
    assert done.code == 1 and "swapped" in done.err
    assert list(site.work.iterdir()) == []


def test_open_without_terminal_or_fd_is_a_usage_error(tmp_path: Path) -> None:
    """With no --password-fd / --passphrase-fd and no terminal, open exits 2 naming the option."""
    (tmp_path / "x.age").write_bytes(b"age-encryption.org/v1\n")
    site = make_site(tmp_path)
    done = site.gateway(
        "open", "x.age", "--as", HANDLER, "--password-fd", "{handler}", "--via", "hand"
    )
    assert done.code == 2
    assert "--passphrase-fd" in done.err
    done = site.gateway("open", "x.age", "--as", HANDLER, "--via", "hand")
    assert done.code == 2
    assert "--password-fd" in done.err


def test_seal_prints_only_the_batch_id_and_writes_the_notice(
    tmp_path: Path, client: CliRunner
) -> None:
    """seal prints the batch id alone; the notice holds Batch: and Passphrase: lines, mode 0600."""
    (tmp_path / "a.csv").write_text("h\r\n1\r\n", encoding="cp932")
    batch = _seal(client, tmp_path, "a.csv")
    notice = tmp_path / "notices" / f"{batch}.notice.pdf"
    text = "\n".join(p.extract_text() or "" for p in PdfReader(notice).pages)
    assert f"Batch: {batch}" in text.splitlines()
    assert (notice.stat().st_mode & 0o777) == 0o600
    assert sorted(p.name for p in (tmp_path / "outbox").iterdir()) == [f"{batch}.age"]
    envelope = (tmp_path / "outbox" / f"{batch}.age").read_bytes()
    assert _passphrase(notice).encode() not in envelope


@pytest.mark.parametrize(
    ("setup", "args", "code", "message"),
    [
        (None, ["missing.csv"], 2, "no such file"),
        ("empty", ["empty.csv"], 2, "empty"),
        ("dir", ["adir"], 2, "not a regular file"),
        ("age", ["x.age"], 2, "already an age file"),
        ("ragged", ["ragged.csv"], 1, "row 3 has 3 columns"),
        ("sjis-bad", ["bad.csv"], 1, "not valid cp932"),
        ("dup", ["a.csv", "sub/a.csv"], 2, "both named"),
    ],
)
def test_seal_refuses_bad_input_and_writes_nothing(
    tmp_path: Path, client: CliRunner, setup: str | None, args: list[str], code: int, message: str
) -> None:
    """Bad inputs get one clear error line, the right exit status, and no output files."""
    (tmp_path / "empty.csv").write_bytes(b"")
    (tmp_path / "adir").mkdir()
    (tmp_path / "x.age").write_bytes(b"age-encryption.org/v1\n-> scrypt AAAA 18\n")
    (tmp_path / "ragged.csv").write_text("a,b\r\n1,2\r\n1,2,3\r\n", encoding="cp932")
    (tmp_path / "bad.csv").write_bytes(b"a,b\r\n\x82\xff,1\r\n")
    (tmp_path / "a.csv").write_text("h\r\n1\r\n", encoding="cp932")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "a.csv").write_text("h\r\n1\r\n", encoding="cp932")
    cfg = _fast_config(tmp_path)
    done = client("--config", cfg, "seal", *args, "--notice-type", "KAIGO")
    assert done.code == code, done.err
    assert message in done.err and "Traceback" not in done.err
    assert done.out == ""
    for directory in ("outbox", "notices"):
        assert not (tmp_path / directory).exists() or not any((tmp_path / directory).iterdir())


def test_seal_refuses_notice_dir_inside_out_dir(tmp_path: Path, client: CliRunner) -> None:
    """The password notice may never be written where the data goes."""
    (tmp_path / "a.csv").write_text("h\r\n1\r\n", encoding="cp932")
    done = client(
        "--config",
        _fast_config(tmp_path),
        "seal",
        "a.csv",
        "--notice-type",
        "KAIGO",
        "--out-dir",
        "out",
        "--notice-dir",
        "out/notices",
    )
    assert done.code == 2 and "never travel with the data" in done.err
    assert not (tmp_path / "out").exists()


def test_seal_refuses_bad_notice_type(tmp_path: Path, client: CliRunner) -> None:
    """A notice type that would make an unsafe batch id is a usage error."""
    (tmp_path / "a.csv").write_text("h\r\n1\r\n", encoding="cp932")
    done = client("--config", _fast_config(tmp_path), "seal", "a.csv", "--notice-type", "../x")
    assert done.code == 2 and "notice type" in done.err


def test_unknown_config_key_exits_78_naming_file_and_key(tmp_path: Path, client: CliRunner) -> None:
    """A config with an unknown key is a configuration error naming the file and the key."""
    cfg = tmp_path / "c.toml"
    cfg.write_text("[seal]\nwork_factr = 18\n")
    (tmp_path / "a.csv").write_text("h\r\n1\r\n", encoding="cp932")
    done = client("--config", cfg, "seal", "a.csv", "--notice-type", "KAIGO")
    assert done.code == 78
    assert f"{cfg}: seal.work_factr: unknown key" in done.err


def test_private_key_readable_by_others_exits_78(tmp_path: Path, client: CliRunner) -> None:
    """keygen makes a 0600 key; once it is made group-readable every command refuses (78)."""
    done = client("keygen")
    assert done.code == 0, done.err
    pub, fingerprint = done.out.splitlines()
    assert pub.endswith("keys/ward_ed25519.pub") and fingerprint.startswith("SHA256:")
    key = tmp_path / "keys" / "ward_ed25519"
    assert (key.stat().st_mode & 0o777) == 0o600
    assert client("keygen").code == 1  # never overwrites
    key.chmod(0o640)
    (tmp_path / "a.csv").write_text("h\r\n1\r\n", encoding="cp932")
    done = client("seal", "a.csv", "--notice-type", "KAIGO")
    assert done.code == 78 and "chmod 600" in done.err


def test_missing_explicit_config_exits_78(tmp_path: Path, gateway: CliRunner) -> None:
    """A --config file that does not exist is a configuration error."""
    done = gateway(
        "--config", "nope.toml", "open", "x.age", "--as", "tanaka", "--via", "hand",
        "--passphrase-fd", "0",
    )  # fmt: skip
    assert done.code == 78 and "nope.toml" in done.err
