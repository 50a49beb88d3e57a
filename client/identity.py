"""The ward's Ed25519 key pair: created by ``keygen``, used for SFTP login and signing."""

import os
from dataclasses import dataclass
from pathlib import Path

from client.errors import ClientError
from client.i18n import _
from custody import keys

PUBLIC_SUFFIX = ".pub"


@dataclass(frozen=True)
class KeyPair:
    """Where a key pair was written and how to recognise it."""

    private_path: Path
    public_path: Path
    fingerprint: str


def generate(private_path: Path, comment: str) -> KeyPair:
    """Create a new key pair: private key mode 0600, public key beside it.

    Args:
        private_path: where the private key goes; ``.pub`` is appended for the public key.
        comment: the public key's comment (who and where).

    Returns:
        The paths and the ``SHA256:`` fingerprint of the public key.

    Raises:
        ClientError: either file already exists (never overwritten) or cannot be written.
    """
    public_path = private_path.with_name(private_path.name + PUBLIC_SUFFIX)
    for path in (private_path, public_path):
        if path.exists() or path.is_symlink():
            raise ClientError(
                _("{path} already exists; keygen never overwrites a key").format(path=path),
                hint=_("choose another --out, or remove the old key deliberately"),
            )
    private_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = keys.generate_private_key()
    public_text = keys.public_key_to_openssh(key.public_key(), comment) + "\n"
    try:
        _write_new(private_path, keys.private_key_to_openssh(key), 0o600)
        try:
            _write_new(public_path, public_text.encode("ascii"), 0o644)
        except BaseException:
            private_path.unlink(missing_ok=True)
            raise
    except OSError as exc:
        raise ClientError(
            _("cannot write the key: {reason}").format(reason=exc.strerror or exc)
        ) from None
    return KeyPair(private_path, public_path, keys.fingerprint(key.public_key()))


def _write_new(path: Path, data: bytes, mode: int) -> None:
    """Write a file that must not exist yet, with ``mode``, durably."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(path, flags, mode)
    try:
        os.fchmod(fd, mode)
        os.write(fd, data)
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        path.unlink(missing_ok=True)
        raise
    os.close(fd)
