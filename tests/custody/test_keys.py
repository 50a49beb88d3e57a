"""Ed25519 keys in OpenSSH and PKCS#8 formats, and their fingerprints."""

import base64
import hashlib
import shutil
import struct
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from custody.errors import KeyFormatError
from custody.keys import (
    fingerprint,
    generate_private_key,
    load_private_key,
    load_public_key,
    private_key_to_openssh,
    public_key_to_openssh,
    ssh_public_key_blob,
)

SEED = bytes(range(32))
"""Private key of the known-answer vectors below."""
VECTOR_PUBLIC_LINE = (
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAOhB7/zzhC+HXDdGOdLwJln5NYwm6UNXx3chmQSVTG4 vector"
)
VECTOR_FINGERPRINT = "SHA256:lbmsoA0yIEcEiVDRnMWuzm+nV+3ZEEpVIURqFoeSspg"
"""As printed by ``ssh-keygen -lf`` (OpenSSH 9) for VECTOR_PUBLIC_LINE."""

SSH_KEYGEN = shutil.which("ssh-keygen")
needs_ssh_keygen = pytest.mark.skipif(SSH_KEYGEN is None, reason="ssh-keygen is not installed")


def _vector_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(SEED)


def _raw(pub: Ed25519PublicKey) -> bytes:
    return pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _ssh_keygen(*args: str) -> str:
    assert SSH_KEYGEN is not None
    done = subprocess.run([SSH_KEYGEN, *args], capture_output=True, text=True, check=True)
    return done.stdout


def test_known_public_line_and_fingerprint() -> None:
    """A fixed key formats and fingerprints exactly as OpenSSH does."""
    pub = _vector_key().public_key()
    assert public_key_to_openssh(pub, "vector") == VECTOR_PUBLIC_LINE
    assert fingerprint(pub) == VECTOR_FINGERPRINT


def test_fingerprint_is_sha256_of_the_wire_blob() -> None:
    """The fingerprint is unpadded base64 of SHA-256 over string type || string key."""
    pub = _vector_key().public_key()
    blob = struct.pack(">I", 11) + b"ssh-ed25519" + struct.pack(">I", 32) + _raw(pub)
    assert ssh_public_key_blob(pub) == blob
    digest = base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")
    assert fingerprint(pub) == "SHA256:" + digest


def test_private_key_openssh_round_trip() -> None:
    """A generated key survives OpenSSH PEM serialization."""
    key = generate_private_key()
    pem = private_key_to_openssh(key)
    assert pem.startswith(b"-----BEGIN OPENSSH PRIVATE KEY-----\n")
    assert _raw(load_private_key(pem).public_key()) == _raw(key.public_key())


def test_private_key_pkcs8_is_accepted() -> None:
    """An unencrypted PKCS#8 PEM Ed25519 key loads too."""
    key = _vector_key()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    assert fingerprint(load_private_key(pem).public_key()) == VECTOR_FINGERPRINT


def _encrypted_openssh() -> bytes:
    encryption = (
        serialization.PrivateFormat.OpenSSH.encryption_builder().kdf_rounds(1).build(b"passphrase")
    )
    return _vector_key().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, encryption
    )


def _encrypted_pkcs8() -> bytes:
    return _vector_key().private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"passphrase"),
    )


def _ecdsa_openssh() -> bytes:
    return ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )


def _corrupt_openssh() -> bytes:
    lines = private_key_to_openssh(_vector_key()).splitlines(keepends=True)
    body = lines[1]
    lines[1] = body[:10] + (b"B" if body[10:11] != b"B" else b"C") + body[11:]
    return b"".join(lines)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (_encrypted_openssh, "encrypted"),
        (_encrypted_pkcs8, "not an OpenSSH"),
        (_ecdsa_openssh, "not an Ed25519"),
        (_corrupt_openssh, "corrupt"),
        (lambda: b"", "not an OpenSSH"),
        (lambda: b"garbage", "not an OpenSSH"),
        (lambda: VECTOR_PUBLIC_LINE.encode(), "not an OpenSSH"),
        (lambda: b"-----BEGIN OPENSSH PRIVATE KEY-----\nAAAA\n", "corrupt"),
    ],
    ids=["encrypted-openssh", "encrypted-pkcs8", "ecdsa", "corrupt", "empty", "garbage",
         "public-line", "truncated"],
)  # fmt: skip
def test_load_private_key_refuses(make: object, message: str) -> None:
    """Encrypted, foreign, corrupt or non-key input raises KeyFormatError."""
    assert callable(make)
    with pytest.raises(KeyFormatError, match=message):
        load_private_key(make())


def test_load_private_key_refuses_str() -> None:
    """A str is refused: key files are read as bytes."""
    with pytest.raises(KeyFormatError):
        load_private_key(private_key_to_openssh(_vector_key()).decode())  # type: ignore[arg-type]


def test_errors_never_carry_key_material() -> None:
    """A failed load says what is wrong without echoing the key or chaining its parser error."""
    data = _corrupt_openssh()
    with pytest.raises(KeyFormatError) as info:
        load_private_key(data)
    body = data.splitlines()[1].decode()
    text = str(info.value) + repr(info.value)
    assert all(body[i : i + 12] not in text for i in range(0, len(body) - 12))
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_public_key_round_trip_with_and_without_comment() -> None:
    """A public line loads back to the same key, whatever its comment."""
    pub = generate_private_key().public_key()
    for comment in ("", "ward@新宿区 PC-01"):
        line = public_key_to_openssh(pub, comment)
        assert _raw(load_public_key(line)) == _raw(pub)
        assert _raw(load_public_key((line + "\n").encode())) == _raw(pub)
    assert public_key_to_openssh(pub).count(" ") == 1


def test_public_key_comment_with_newline_is_refused() -> None:
    """A comment that would split the line is refused."""
    with pytest.raises(KeyFormatError):
        public_key_to_openssh(_vector_key().public_key(), "a\nssh-ed25519 AAAA")


def _line_for(blob: bytes, key_type: str = "ssh-ed25519") -> str:
    return f"{key_type} {base64.b64encode(blob).decode()}"


def _blob(key_type: bytes = b"ssh-ed25519", raw: bytes = b"\x01" * 32) -> bytes:
    return struct.pack(">I", len(key_type)) + key_type + struct.pack(">I", len(raw)) + raw


_VECTOR_B64 = VECTOR_PUBLIC_LINE.split()[1]


@pytest.mark.parametrize(
    "text",
    [
        "",
        "ssh-ed25519",
        "ssh-rsa " + _VECTOR_B64,
        _line_for(_blob(b"ssh-rsa")),
        _line_for(_blob(raw=b"\x01" * 31)),
        _line_for(_blob(raw=b"\x01" * 33)),
        _line_for(_blob() + b"\x00"),
        _line_for(_blob()[:20]),
        "ssh-ed25519 " + _VECTOR_B64[:-1] + "!",
        "ssh-ed25519 " + _VECTOR_B64.rstrip("=") + "5",
        VECTOR_PUBLIC_LINE + "\n" + VECTOR_PUBLIC_LINE,
        'command="sh" ' + VECTOR_PUBLIC_LINE,
        "-----BEGIN PUBLIC KEY-----",
        b"\xff\xfe",
    ],
    ids=repr,
)
def test_load_public_key_refuses(text: str | bytes) -> None:
    """Wrong type, wrong length, trailing bytes, bad base64, several lines or options fail."""
    with pytest.raises(KeyFormatError):
        load_public_key(text)


def test_non_canonical_base64_is_refused() -> None:
    """Base64 whose unused padding bits are set is refused before the blob is read."""
    canonical = base64.b64encode(_blob() + b"\x00").decode()
    assert canonical.endswith("AA==")
    twin = canonical[:-3] + "B=="
    assert base64.b64decode(twin) == base64.b64decode(canonical)
    with pytest.raises(KeyFormatError, match="canonical"):
        load_public_key("ssh-ed25519 " + twin)


def test_fingerprint_refuses_a_private_key() -> None:
    """Passing the private key where a public one is expected is a KeyFormatError."""
    with pytest.raises(KeyFormatError):
        fingerprint(_vector_key())  # type: ignore[arg-type]


@pytest.mark.interop
@needs_ssh_keygen
def test_fingerprint_matches_ssh_keygen(tmp_path: Path) -> None:
    """ssh-keygen -lf prints the same fingerprint for our public line."""
    pub = generate_private_key().public_key()
    path = tmp_path / "k.pub"
    path.write_text(public_key_to_openssh(pub, "t") + "\n")
    assert _ssh_keygen("-lf", str(path)).split()[1] == fingerprint(pub)


@pytest.mark.interop
@needs_ssh_keygen
def test_ssh_keygen_reads_our_private_key(tmp_path: Path) -> None:
    """ssh-keygen -y derives our public line from our OpenSSH private key."""
    key = generate_private_key()
    path = tmp_path / "k"
    path.write_bytes(private_key_to_openssh(key))
    path.chmod(0o600)
    derived = _ssh_keygen("-y", "-f", str(path)).split()[:2]
    assert " ".join(derived) == public_key_to_openssh(key.public_key())


@pytest.mark.interop
@needs_ssh_keygen
def test_we_read_ssh_keygen_keys(tmp_path: Path) -> None:
    """A key pair made by ssh-keygen loads, and both halves give ssh-keygen's fingerprint."""
    path = tmp_path / "id"
    _ssh_keygen("-q", "-t", "ed25519", "-N", "", "-C", "ward", "-f", str(path))
    key = load_private_key(path.read_bytes())
    pub = load_public_key(path.with_suffix(".pub").read_text())
    expected = _ssh_keygen("-lf", str(path.with_suffix(".pub"))).split()[1]
    assert fingerprint(key.public_key()) == fingerprint(pub) == expected
