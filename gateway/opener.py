"""``lgwan-gateway open``: decrypt a batch at the print site, verify it, then release it.

Everything inside the envelope is hostile until proven otherwise. Plaintext is
written only into a private temporary directory inside the output directory,
named after the batch — ``<out>/.opening-<batch>-XXXX/``, created once the
manifest is read and admitted, so a process killed while decrypting (SIGKILL,
out of memory, power loss) leaves plaintext that ``erase`` attributes to its
batch and erases with it. The batch directory ``<out>/<batch>/`` appears (by
one rename) only after the whole payload authenticated and every file matched
the manifest. Any failure overwrites the temporary directory's files with
zeros and removes it (:func:`gateway.erasure.shred_tree`): nothing is left behind.

Modes: every directory ``open`` creates is 0700 and every released file 0600,
whatever the umask. The caller may look at the manifest before anything is
extracted (``admit``): custody rules that need the batch id (erased? opened
before?) refuse there, before a single plaintext byte is written.
"""

import contextlib
import hashlib
import io
import os
import tarfile
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

from custody.erasure_certificate import OPENING_PREFIX
from envelope import DecryptingReader, EnvelopeError, ManifestError, NoMatchError
from envelope.manifest import BATCH_ID_RE, MANIFEST_NAME, MAX_MANIFEST_BYTES, Manifest, parse
from envelope.printdata import count_records, is_csv
from gateway.erasure import shred_tree
from gateway.errors import GatewayError
from gateway.i18n import _

AGE_SUFFIX = ".age"
_BLOCK = 1 << 20
_TEMP_PREFIX = OPENING_PREFIX
_MAX_PADDING = 2 * tarfile.RECORDSIZE

Progress = Callable[[int], None]
Admit = Callable[[Manifest], None]
"""Called with the authenticated manifest before extraction; raising refuses the batch."""


class _Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


@dataclass(frozen=True)
class Opened:
    """A verified, released batch."""

    manifest: Manifest
    directory: Path


class OpenError(GatewayError):
    """The batch could not be opened; nothing was released."""


def open_batch(
    envelope_path: Path,
    out_dir: Path,
    passphrase: str,
    *,
    max_work_factor: int,
    csv_encoding: str,
    progress: Progress | None = None,
    admit: Admit | None = None,
    wipe_passes: int = 1,
) -> Opened:
    """Decrypt ``envelope_path`` into ``out_dir/<batch>/`` after full verification.

    Args:
        envelope_path: the sealed ``.age`` file.
        out_dir: where the batch directory is created (it and any missing
            parent made 0700).
        passphrase: the canonical passphrase (already checked for typos).
        max_work_factor: refuse envelopes asking for more scrypt work.
        csv_encoding: encoding used to recount CSV records.
        progress: called with ciphertext bytes consumed.
        admit: called with the manifest once it has been read (and its batch id
            matched the file name), before any file is extracted; whatever it
            raises propagates and nothing is released.
        wipe_passes: zero passes over plaintext abandoned on a failure.

    Returns:
        The manifest and the released directory.

    Raises:
        OpenError: wrong passphrase, tampering, a manifest mismatch, an unsafe
            member, or an existing batch directory.
        Exception: whatever ``admit`` raises.
    """
    try:
        source = envelope_path.open("rb")
    except OSError as exc:
        raise OpenError(
            _("{path}: cannot open: {reason}").format(path=envelope_path, reason=exc.strerror)
        ) from None
    out_dir = out_dir.absolute()
    try:
        make_private_dir(out_dir)
    except BaseException:
        source.close()
        raise
    workspace = _Workspace(out_dir)
    try:
        with source:
            counted = io.BufferedReader(_CountingReader(source, progress), _BLOCK)
            manifest, digests = _extract(
                counted, passphrase, max_work_factor, workspace, envelope_path, admit
            )
        temp = workspace.path()
        _verify(temp, manifest, digests, csv_encoding)
        target = _free_target(out_dir, manifest)
        temp.rename(target)
    except BaseException:
        workspace.discard(wipe_passes)
        raise
    return Opened(manifest=manifest, directory=target)


class _Workspace:
    """The private ``<out>/.opening-<batch>-XXXX/`` directory, made once the batch is known."""

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = out_dir
        self._path: Path | None = None

    def create(self, batch_id: str) -> Path:
        """Make it (0700) for ``batch_id`` (a checked batch id: one safe component)."""
        self._path = Path(tempfile.mkdtemp(prefix=f"{_TEMP_PREFIX}{batch_id}-", dir=self.out_dir))
        return self._path

    def path(self) -> Path:
        """The directory (after :meth:`create`)."""
        assert self._path is not None, "no file is extracted before the manifest is admitted"
        return self._path

    def discard(self, passes: int) -> None:
        """Overwrite and remove whatever was written; never fails (the caller's error wins)."""
        if self._path is None or not os.path.lexists(self._path):
            return
        with contextlib.suppress(GatewayError, OSError):  # else ``erase`` finds it later
            shred_tree(self._path, passes=passes)


def _extract(
    source: BinaryIO,
    passphrase: str,
    max_work_factor: int,
    workspace: _Workspace,
    path: Path,
    admit: Admit | None,
) -> tuple[Manifest, dict[str, str]]:
    """Decrypt and unpack into the workspace (made once the manifest is admitted).

    Returns:
        The manifest and each file's SHA-256, once the whole payload authenticated.
    """
    try:
        reader = DecryptingReader(source, passphrase, max_work_factor=max_work_factor)
        with tarfile.open(fileobj=reader, mode="r|", bufsize=_BLOCK) as tar:
            manifest = _read_manifest(tar)
            _check_name(path, manifest)
            if admit is not None:
                admit(manifest)
            _free_target(workspace.out_dir, manifest)
            temp = workspace.create(manifest.batch_id)
            expected = {f.name: f.size for f in manifest.files}
            digests: dict[str, str] = {}
            while (member := tar.next()) is not None:
                digests[member.name] = _extract_member(tar, member, expected, temp)
            if expected:
                raise OpenError(
                    _("{count} file(s) in the manifest are missing").format(count=len(expected))
                )
        _drain_padding(reader)
    except NoMatchError:
        raise OpenError(
            _("{name}: the passphrase does not open this batch").format(name=path.name),
            hint=_("check it against the password notice for this batch id"),
        ) from None
    except (EnvelopeError, tarfile.TarError) as exc:
        raise OpenError(
            _("{name}: {problem}; nothing was released").format(
                name=path.name, problem=_describe(exc)
            )
        ) from None
    return manifest, digests


def make_private_dir(directory: Path) -> None:
    """Create ``directory`` and any missing parent, each exactly mode 0700 (umask aside).

    Existing directories are left as they are.

    Raises:
        OSError: a directory cannot be created (or a non-directory is in the way).
    """
    missing: list[Path] = []
    current = directory.absolute()
    while not current.exists():
        missing.append(current)
        current = current.parent
    for level in reversed(missing):
        try:
            level.mkdir(mode=0o700)
        except FileExistsError:  # made meanwhile by someone else: not ours to chmod
            continue
        level.chmod(0o700)
    if not directory.is_dir():
        raise OpenError(_("{path} is not a directory").format(path=directory))


def batch_of_name(path: Path) -> str | None:
    """The batch id an envelope's file name claims (``<batch>.age``), or None."""
    stem = path.name[: -len(AGE_SUFFIX)] if path.name.endswith(AGE_SUFFIX) else path.name
    return stem if BATCH_ID_RE.fullmatch(stem) else None


def _drain_padding(reader: _Readable) -> None:
    """Read to the end of the payload: this authenticates the final chunk.

    After the archive's end marker only tar's zero padding may follow.
    """
    total = 0
    while block := reader.read(_BLOCK):
        total += len(block)
        if total > _MAX_PADDING or block.count(0) != len(block):
            raise OpenError(_("data follows the archive inside the envelope"))


def _free_target(out_dir: Path, manifest: Manifest) -> Path:
    """The batch directory to create; refuse when it already exists."""
    target = out_dir / manifest.batch_id
    if target.exists() or target.is_symlink():
        raise OpenError(
            _("{path} already exists; refusing to overwrite an opened batch").format(path=target),
            hint=_("erase or move the earlier copy first"),
        )
    return target


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ManifestError):
        return _("bad manifest: {reason}").format(reason=exc)
    if isinstance(exc, EnvelopeError):
        return _("the envelope is damaged or was tampered with ({kind}: {reason})").format(
            kind=type(exc).__name__, reason=exc
        )
    return _("the archive inside the envelope is malformed ({reason})").format(reason=exc)


def _read_manifest(tar: tarfile.TarFile) -> Manifest:
    """The first member must be the manifest, a small regular file."""
    first = tar.next()
    if first is None or first.name != MANIFEST_NAME or not first.isreg():
        raise ManifestError(_("the first member is not {name}").format(name=MANIFEST_NAME))
    if first.size > MAX_MANIFEST_BYTES:
        raise ManifestError(_("the manifest is too large"))
    handle = tar.extractfile(first)
    assert handle is not None  # a regular member always has a file object
    return parse(handle.read())


def _extract_member(
    tar: tarfile.TarFile, member: tarfile.TarInfo, expected: dict[str, int], temp: Path
) -> str:
    """Write one listed regular file into ``temp``; refuse anything else.

    Returns:
        The SHA-256 (hex) of what was written, computed on the way.
    """
    if not member.isreg():
        raise OpenError(
            _("the envelope holds a non-file member ({name})").format(name=repr(member.name[:60]))
        )
    size = expected.pop(member.name, None)
    if size is None:
        raise OpenError(
            _("the envelope holds a file not in its manifest ({name})").format(
                name=repr(member.name[:60])
            )
        )
    if member.size != size:
        raise OpenError(_("{name}: size differs from the manifest").format(name=member.name))
    handle = tar.extractfile(member)
    assert handle is not None
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    # member.name passed check_file_name() via the manifest: one safe component.
    fd = os.open(temp / member.name, flags, 0o600)
    digest = hashlib.sha256()
    with os.fdopen(fd, "wb") as sink:
        while block := handle.read(_BLOCK):
            digest.update(block)
            sink.write(block)
        sink.flush()
        os.fsync(sink.fileno())
    return digest.hexdigest()


def _verify(temp: Path, manifest: Manifest, digests: dict[str, str], encoding: str) -> None:
    """Check every released file's size, SHA-256 and record count against the manifest.

    Args:
        temp: the private directory the files were written to.
        manifest: what the ward sealed.
        digests: SHA-256 of each file as it was written.
        encoding: CSV encoding for recounting records.
    """
    for entry in manifest.files:
        path = temp / entry.name
        if path.stat().st_size != entry.size or digests.get(entry.name) != entry.sha256:
            raise OpenError(
                _("{name}: content differs from the manifest (SHA-256)").format(name=entry.name)
            )
        records = 1
        if is_csv(entry.name):
            with path.open("rb") as handle:
                try:
                    records = count_records(handle, entry.name, encoding)
                except ManifestError as exc:
                    raise OpenError(f"{entry.name}: {exc}") from None
        if records != entry.records:
            raise OpenError(
                _("{name}: {records} records, the manifest says {expected}").format(
                    name=entry.name, records=records, expected=entry.records
                )
            )


def _check_name(path: Path, manifest: Manifest) -> None:
    """An envelope named like a batch id must hold that batch (no swapped files)."""
    stem = batch_of_name(path)
    if stem is not None and stem != manifest.batch_id:
        raise OpenError(
            _("{name} holds batch {batch}, not {expected}").format(
                name=path.name, batch=manifest.batch_id, expected=stem
            ),
            hint=_("the file was renamed or swapped; ask the ward which batch this is"),
        )


class _CountingReader(io.RawIOBase):
    """A raw reader that reports the bytes it passes through to a progress callback."""

    def __init__(self, inner: BinaryIO, progress: Progress | None) -> None:
        self._inner = inner
        self._progress = progress

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        data = self._inner.read(len(buffer))
        buffer[: len(data)] = data
        if self._progress is not None and data:
            self._progress(len(data))
        return len(data)
