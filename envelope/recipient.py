"""The scrypt recipient stanza of https://age-encryption.org/v1 (passphrase encryption).

::

    -> scrypt <base64 16-byte salt> <log2 N, decimal>
    <base64 ChaCha20-Poly1305(key=scrypt(passphrase, label || salt, N, r=8, p=1),
                              nonce=12 zero bytes, file key)>

A scrypt stanza must be the only stanza of its header. The work factor is
checked against the caller's maximum before any scrypt work is done.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from envelope.errors import HeaderError, NoMatchError
from envelope.format import FILE_KEY_SIZE, Stanza, b64decode, b64encode

SCRYPT_STANZA_TYPE = "scrypt"
SCRYPT_LABEL = b"age-encryption.org/v1/scrypt"
SCRYPT_SALT_SIZE = 16
SCRYPT_R = 8
SCRYPT_P = 1
WRAP_KEY_SIZE = 32
WRAP_NONCE = bytes(12)
WRAPPED_FILE_KEY_SIZE = FILE_KEY_SIZE + 16
MIN_WORK_FACTOR = 1
MAX_WORK_FACTOR = 30
"""Hard ceiling (as in the reference implementation): 2**30 * 1 KiB of scrypt memory."""

_DECIMAL = re.compile(r"[1-9][0-9]?")
_HASHLIB_MAXMEM = 2**31 - 1


@dataclass(frozen=True)
class ScryptParams:
    """The public parameters of a scrypt stanza."""

    salt: bytes
    work_factor: int


def check_work_factor(work_factor: int, name: str = "work_factor") -> None:
    """Reject a work factor outside ``MIN_WORK_FACTOR..MAX_WORK_FACTOR``.

    Raises:
        ValueError: out of range (a programming or configuration error).
    """
    if not MIN_WORK_FACTOR <= work_factor <= MAX_WORK_FACTOR:
        raise ValueError(f"{name} must be {MIN_WORK_FACTOR}..{MAX_WORK_FACTOR}")


def parse_scrypt_stanza(stanza: Stanza) -> ScryptParams:
    """Validate a scrypt stanza without doing any scrypt work.

    Args:
        stanza: a stanza of type ``scrypt``.

    Returns:
        Its salt and work factor.

    Raises:
        HeaderError: wrong argument count, a salt that is not canonical base64
            of 16 bytes, a work factor that is not a plain decimal in
            ``1..MAX_WORK_FACTOR``, or a body that is not 32 bytes.
    """
    if len(stanza.args) != 2:
        raise HeaderError("scrypt stanza needs exactly two arguments")
    salt_text, factor_text = stanza.args
    try:
        salt = b64decode(salt_text.encode("ascii"))
    except ValueError:
        raise HeaderError("scrypt salt is not canonical base64") from None
    if len(salt) != SCRYPT_SALT_SIZE:
        raise HeaderError("scrypt salt must be 16 bytes")
    if not _DECIMAL.fullmatch(factor_text) or int(factor_text) > MAX_WORK_FACTOR:
        raise HeaderError(f"scrypt work factor must be a decimal in 1..{MAX_WORK_FACTOR}")
    if len(stanza.body) != WRAPPED_FILE_KEY_SIZE:
        raise HeaderError("scrypt stanza body must be a 32-byte wrapped file key")
    return ScryptParams(salt, int(factor_text))


def find_scrypt_stanza(stanzas: tuple[Stanza, ...]) -> Stanza | None:
    """Return the header's scrypt stanza, validated, if it has one.

    Args:
        stanzas: all stanzas of the header.

    Returns:
        The scrypt stanza, or None when the header has none.

    Raises:
        HeaderError: a scrypt stanza is not alone, or is malformed.
    """
    found = [s for s in stanzas if s.type == SCRYPT_STANZA_TYPE]
    if not found:
        return None
    if len(stanzas) != 1:
        raise HeaderError("a scrypt stanza must be the only stanza in the header")
    parse_scrypt_stanza(found[0])
    return found[0]


def _wrap_key(passphrase: str, salt: bytes, work_factor: int) -> bytes:
    """scrypt(passphrase, label || salt, N=2**work_factor, r=8, p=1) -> 32 bytes."""
    password = passphrase.encode("utf-8")
    full_salt = SCRYPT_LABEL + salt
    n = 1 << work_factor
    needed = 128 * SCRYPT_R * (n + SCRYPT_P + 2) + (1 << 20)
    if needed < _HASHLIB_MAXMEM:
        return hashlib.scrypt(
            password, salt=full_salt, n=n, r=SCRYPT_R, p=SCRYPT_P, maxmem=needed, dklen=32
        )
    return Scrypt(salt=full_salt, length=WRAP_KEY_SIZE, n=n, r=SCRYPT_R, p=SCRYPT_P).derive(
        password
    )


def wrap(file_key: bytes, passphrase: str, work_factor: int) -> Stanza:
    """Wrap ``file_key`` in a new scrypt stanza with a fresh random salt.

    Args:
        file_key: the 16-byte file key.
        passphrase: the non-empty passphrase.
        work_factor: log2 of the scrypt N parameter, used exactly.

    Returns:
        The stanza.

    Raises:
        ValueError: empty passphrase or work factor out of range.
    """
    if not passphrase:
        raise ValueError("the passphrase must not be empty")
    check_work_factor(work_factor)
    salt = os.urandom(SCRYPT_SALT_SIZE)
    key = _wrap_key(passphrase, salt, work_factor)
    body = ChaCha20Poly1305(key).encrypt(WRAP_NONCE, file_key, None)
    return Stanza(SCRYPT_STANZA_TYPE, (b64encode(salt).decode("ascii"), str(work_factor)), body)


def unwrap(stanzas: tuple[Stanza, ...], passphrase: str, max_work_factor: int) -> bytes:
    """Recover the file key from the header's scrypt stanza.

    Every check that needs no scrypt work (stanza alone, syntax, work factor
    within ``max_work_factor``) is done before the work.

    Args:
        stanzas: all stanzas of the header.
        passphrase: the non-empty passphrase.
        max_work_factor: the largest work factor we accept to compute.

    Returns:
        The 16-byte file key.

    Raises:
        HeaderError: malformed or non-alone scrypt stanza, or work factor too large.
        NoMatchError: no scrypt stanza, or the passphrase does not open it.
        ValueError: empty passphrase or ``max_work_factor`` out of range.
    """
    if not passphrase:
        raise ValueError("the passphrase must not be empty")
    check_work_factor(max_work_factor, "max_work_factor")
    stanza = find_scrypt_stanza(stanzas)
    if stanza is None:
        raise NoMatchError("the file is not passphrase-encrypted (no scrypt stanza)")
    params = parse_scrypt_stanza(stanza)
    if params.work_factor > max_work_factor:
        raise HeaderError(
            f"scrypt work factor {params.work_factor} exceeds the maximum {max_work_factor}"
        )
    key = _wrap_key(passphrase, params.salt, params.work_factor)
    try:
        return ChaCha20Poly1305(key).decrypt(WRAP_NONCE, stanza.body, None)
    except InvalidTag:
        raise NoMatchError("wrong passphrase") from None
