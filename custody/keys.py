"""Ed25519 keys in OpenSSH formats, and their SHA256 fingerprints.

The same key pair signs custody records and logs the ward in over SFTP, so
private keys are written as unencrypted ``OPENSSH PRIVATE KEY`` PEM (the file
itself is protected by its 0600 mode), public keys as one ``ssh-ed25519 AAAA…``
line, and fingerprints match ``ssh-keygen -lf`` byte for byte.

Errors name the problem, never the key material.
"""

import base64
import binascii
import hashlib
import struct

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from custody.errors import KeyFormatError

SSH_KEY_TYPE = "ssh-ed25519"
"""Key-type name of Ed25519 in the SSH wire format (RFC 8709)."""

FINGERPRINT_PREFIX = "SHA256:"
"""Prefix of an OpenSSH SHA-256 fingerprint."""

OPENSSH_PRIVATE_PEM_LABEL = b"-----BEGIN OPENSSH PRIVATE KEY-----"
PKCS8_PRIVATE_PEM_LABEL = b"-----BEGIN PRIVATE KEY-----"

ED25519_PUBLIC_KEY_BYTES = 32
MAX_PUBLIC_KEY_LINE = 8192
"""Longest accepted public-key line, in characters (comment included)."""


def generate_private_key() -> Ed25519PrivateKey:
    """Generate a fresh Ed25519 private key.

    Returns:
        The new private key.
    """
    return Ed25519PrivateKey.generate()


def private_key_to_openssh(key: Ed25519PrivateKey) -> bytes:
    """Serialize a private key as unencrypted OpenSSH PEM.

    Args:
        key: The Ed25519 private key.

    Returns:
        The ``-----BEGIN OPENSSH PRIVATE KEY-----`` PEM bytes, as ``ssh`` reads them.

    Raises:
        KeyFormatError: ``key`` is not an Ed25519 private key.
    """
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFormatError(f"expected an Ed25519 private key, got {type(key).__name__}")
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )


def load_private_key(data: bytes) -> Ed25519PrivateKey:
    """Load an unencrypted Ed25519 private key from OpenSSH or PKCS#8 PEM.

    Args:
        data: The key file's bytes.

    Returns:
        The private key.

    Raises:
        KeyFormatError: Not PEM in one of the two formats, encrypted, corrupt,
            or a key of another algorithm.
    """
    if not isinstance(data, bytes):
        raise KeyFormatError(f"expected key file bytes, got {type(data).__name__}")
    pem = data.strip()
    try:
        if pem.startswith(OPENSSH_PRIVATE_PEM_LABEL):
            key: object = serialization.load_ssh_private_key(pem, password=None)
        elif pem.startswith(PKCS8_PRIVATE_PEM_LABEL):
            key = serialization.load_pem_private_key(pem, password=None)
        else:
            raise KeyFormatError("not an OpenSSH or unencrypted PKCS#8 PEM private key")
    except TypeError:
        # cryptography raises TypeError when a password would be needed.
        raise KeyFormatError("encrypted private keys are not supported") from None
    except (ValueError, UnsupportedAlgorithm):
        raise KeyFormatError("corrupt or unsupported private key") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFormatError(f"not an Ed25519 key ({type(key).__name__})")
    return key


def public_key_to_openssh(pub: Ed25519PublicKey, comment: str = "") -> str:
    """Format a public key as one OpenSSH ``authorized_keys`` line.

    Args:
        pub: The Ed25519 public key.
        comment: Optional trailing comment (e.g. ``ward@host``); no line breaks.

    Returns:
        ``"ssh-ed25519 AAAA…"`` followed by `` comment`` when one is given,
        without a trailing newline.

    Raises:
        KeyFormatError: ``pub`` is not an Ed25519 public key, or the comment
            contains a control character.
    """
    blob = ssh_public_key_blob(pub)
    line = f"{SSH_KEY_TYPE} {base64.b64encode(blob).decode('ascii')}"
    if any(ord(char) < 0x20 or ord(char) == 0x7F for char in comment):
        raise KeyFormatError("public-key comment contains a control character")
    comment = comment.strip()
    return f"{line} {comment}" if comment else line


def load_public_key(text: str | bytes) -> Ed25519PublicKey:
    """Load a public key from an OpenSSH ``ssh-ed25519 AAAA… [comment]`` line.

    Args:
        text: The line (str or UTF-8 bytes); surrounding whitespace is ignored.

    Returns:
        The public key.

    Raises:
        KeyFormatError: Not a single ``ssh-ed25519`` line, base64 that is not
            canonical, or a wire blob of the wrong type, length or with
            trailing bytes.
    """
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError:
            raise KeyFormatError("public key is not UTF-8 text") from None
    if not isinstance(text, str):
        raise KeyFormatError(f"expected a public-key line, got {type(text).__name__}")
    line = text.strip()
    if len(line) > MAX_PUBLIC_KEY_LINE or "\n" in line or "\r" in line:
        raise KeyFormatError("expected exactly one public-key line")
    fields = line.split(maxsplit=2)
    if len(fields) < 2 or fields[0] != SSH_KEY_TYPE:
        raise KeyFormatError(f"not an {SSH_KEY_TYPE} public-key line")
    blob = _strict_b64decode(fields[1])
    return _key_from_blob(blob)


def fingerprint(pub: Ed25519PublicKey) -> str:
    """Compute the OpenSSH SHA-256 fingerprint of a public key.

    Args:
        pub: The Ed25519 public key.

    Returns:
        ``"SHA256:"`` + unpadded base64 of SHA-256 over the SSH wire blob,
        exactly as ``ssh-keygen -lf`` prints it.

    Raises:
        KeyFormatError: ``pub`` is not an Ed25519 public key.
    """
    digest = hashlib.sha256(ssh_public_key_blob(pub)).digest()
    return FINGERPRINT_PREFIX + base64.b64encode(digest).decode("ascii").rstrip("=")


def ssh_public_key_blob(pub: Ed25519PublicKey) -> bytes:
    """Encode a public key in the SSH wire format (RFC 8709 §4).

    Args:
        pub: The Ed25519 public key.

    Returns:
        ``string "ssh-ed25519" || string key`` with uint32 length prefixes.

    Raises:
        KeyFormatError: ``pub`` is not an Ed25519 public key.
    """
    if not isinstance(pub, Ed25519PublicKey):
        raise KeyFormatError(f"expected an Ed25519 public key, got {type(pub).__name__}")
    raw = pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return _ssh_string(SSH_KEY_TYPE.encode("ascii")) + _ssh_string(raw)


def _ssh_string(value: bytes) -> bytes:
    return struct.pack(">I", len(value)) + value


def _strict_b64decode(text: str) -> bytes:
    try:
        blob = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise KeyFormatError("public key is not valid base64") from None
    if base64.b64encode(blob).decode("ascii") != text:
        raise KeyFormatError("public key is not canonical base64")
    return blob


def _key_from_blob(blob: bytes) -> Ed25519PublicKey:
    key_type, rest = _read_ssh_string(blob)
    if key_type != SSH_KEY_TYPE.encode("ascii"):
        raise KeyFormatError(f"public-key blob is not of type {SSH_KEY_TYPE}")
    raw, rest = _read_ssh_string(rest)
    if rest:
        raise KeyFormatError("public-key blob has trailing bytes")
    if len(raw) != ED25519_PUBLIC_KEY_BYTES:
        raise KeyFormatError(f"Ed25519 public key of {len(raw)} bytes, expected 32")
    try:
        return Ed25519PublicKey.from_public_bytes(raw)
    except ValueError:
        raise KeyFormatError("invalid Ed25519 public key") from None


def _read_ssh_string(data: bytes) -> tuple[bytes, bytes]:
    if len(data) < 4:
        raise KeyFormatError("public-key blob is truncated")
    (length,) = struct.unpack(">I", data[:4])
    if len(data) - 4 < length:
        raise KeyFormatError("public-key blob is truncated")
    return data[4 : 4 + length], data[4 + length :]
