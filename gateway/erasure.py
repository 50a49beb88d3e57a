"""Erasing a batch at the print site: find every copy, measure it, wipe it, prove it is gone.

``lgwan-gateway erase`` (:mod:`gateway.erase_cli`) runs three phases; this
module holds the file work of each, and no policy:

1. **Journal** — :func:`find_copies` lists every copy of the batch this site
   knows of and :func:`measure` takes each one's size and SHA-256 (streamed),
   *before* anything is touched; the caller records them with
   ``store.start_erasure``. A resumed erasure reuses the recorded items, so the
   certificate always carries the hashes of the data as it was.
2. **Wipe** — :func:`wipe` overwrites every regular file still present with
   zeros (``passes`` times, 1 MiB blocks, fsync after each pass), unlinks it,
   fsyncs its directory, then removes the emptied ``<work_dir>/<batch>/`` tree
   and those of the batch's interrupted openings.
3. **Check** — :func:`remaining` names every recorded path (and work tree) that
   still exists (``lstat``), and the caller runs :func:`find_copies` again (a
   copy made after the journal was written); only when both find nothing may
   the caller issue a certificate.

Where copies are (each kind as the erasure certificate names it):

=============  ==================================================================
``envelope``   ``<spool>/<batch>.age``
``plaintext``  every regular file under ``<work_dir>/<batch>/`` (``open``'s output)
               and under ``<work_dir>/.opening-<batch>-XXXX/`` (an ``open``
               interrupted before its rename: killed, out of memory, power loss)
``staging``    ``<spool>/.pull/<batch>.age.part`` (pull), ``<spool>/.<batch>.age.part``
               and ``<spool>/<batch>.age.part`` (partial deliveries and DVD imports),
               and every other partial ``<batch>.age.part`` listed below
``quarantine`` ``<storage>/quarantine/<tenant>--<label>--<stamp>--<batch>.age``
               (the name parsed exactly: tenant ``city`` never matches ``city--north``'s)
``retained``   ``<storage>/tenants/<tenant>/inbox|outbox/<batch>.age``
=============  ==================================================================

A partial copy (``.age.part``) is ``staging`` wherever it lies: the ward checks
``envelope``, ``retained`` and ``quarantine`` items against the whole sealed
envelope, and ``staging`` items only for being no larger. A work directory
entry ``.opening-…`` that names no batch (left by an older ``open``) may hold
any batch's plaintext: while one exists, no batch is erased.

Symbolic links are never followed and never silently dropped: every path is
walked from its configured root one component at a time with ``O_NOFOLLOW`` and
directory descriptors, and a link where a copy, or a directory on the way to
one, could be stops the erasure (:class:`ErasureError`): the copy it stands for
may be wherever it points (``storage/quarantine -> /bigdisk/quarantine``), and
only a person can tell. A file with a hard link that is not itself a recorded
copy is refused untouched: overwriting it would change a file outside the
batch, and unlinking alone would leave the data under the other name.
Overwriting is best effort on SSDs and copy-on-write filesystems (the device may
keep the old blocks elsewhere), which is why plaintext is only ever written into
the work directory.

:func:`shred_tree` is the same overwrite for a directory of plaintext that
``open`` abandons (a failed verification, a refusal after decrypting).
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

from custody.erasure_certificate import (
    KIND_ENVELOPE,
    KIND_PLAINTEXT,
    KIND_QUARANTINE,
    KIND_RETAINED,
    KIND_STAGING,
    OPENING_PREFIX,
    opening_of,
)
from gateway.erasure_files import (
    READ_FLAGS,
    Progress,
    Wiper,
    exists,
    hash_fd,
    is_regular,
    link_error,
    list_dir,
    os_error,
    parent_fd,
    parts_below,
    regular_files_below,
)
from gateway.erasure_files import ErasureError as ErasureError  # re-exported
from gateway.i18n import _
from gateway.state import ErasureItem

_WIPE_ORDER = (KIND_PLAINTEXT, KIND_STAGING, KIND_QUARANTINE, KIND_RETAINED, KIND_ENVELOPE)
"""The order copies are wiped in: the most sensitive first, the envelope last."""
_RANK = {kind: rank for rank, kind in enumerate(_WIPE_ORDER)}

AGE_SUFFIX = ".age"
PART_SUFFIX = ".part"
PULL_STAGING_DIR = ".pull"
"""``gateway.pull`` downloads into ``<spool>/.pull/<batch>.age.part``."""
QUARANTINE_DIR = "quarantine"
TENANTS_DIR = "tenants"
RETAINED_AREAS = ("inbox", "outbox")
_QUARANTINE_RE = re.compile(
    r"(?P<tenant>[a-z][a-z0-9-]{1,31})--(?P<label>[a-z0-9_]+(?:-[a-z0-9_]+)*)"
    r"--(?P<stamp>[0-9]{8}T[0-9]{12}Z)--(?P<name>[^/]+)"
)
"""``gateway.storage.Storage.quarantine``'s names: ``<tenant>--<label>--<UTC stamp>--<name>``."""


def method_name(passes: int) -> str:
    """The certificate's ``method``, e.g. ``zero-overwrite-1-pass+unlink`` for one pass."""
    return f"zero-overwrite-{passes}-pass+unlink"


@dataclass(frozen=True)
class Places:
    """The configured roots copies of a batch live under (trusted; everything below is not)."""

    spool: Path
    work_dir: Path
    storage: Path

    def root_of(self, path: Path) -> Path:
        """The configured root ``path`` lies under (the deepest one if roots nest).

        Raises:
            ErasureError: it lies under none (the configuration changed since it was recorded).
        """
        roots = [r for r in (self.spool, self.work_dir, self.storage) if path.is_relative_to(r)]
        if not roots:
            raise ErasureError(
                _("{path} is not under the spool, work or storage directory").format(path=path),
                hint=_("the configured directories changed since the erasure began; restore them"),
            )
        return max(roots, key=lambda r: len(r.parts))


@dataclass(frozen=True)
class Copy:
    """A regular file holding (part of) the batch, found by :func:`find_copies`."""

    kind: str
    path: Path


def find_copies(batch_id: str, tenant: str, places: Places) -> list[Copy]:
    """Every regular file that is a copy of ``batch_id`` here, in wiping order.

    Args:
        batch_id: the batch (already validated: one safe name component).
        tenant: its tenant (already validated).
        places: the configured roots.

    Raises:
        ErasureError: a symbolic link where a copy or a directory on the way could
            be; an interrupted opening's directory that names no batch.
        OSError: a directory cannot be read.
    """
    age = batch_id + AGE_SUFFIX
    part = age + PART_SUFFIX
    candidates: list[tuple[str, Path, tuple[str, ...]]] = [
        (KIND_ENVELOPE, places.spool, (age,)),
        (KIND_STAGING, places.spool, (PULL_STAGING_DIR, part)),
        (KIND_STAGING, places.spool, ("." + part,)),
        (KIND_STAGING, places.spool, (part,)),
    ]
    for area in RETAINED_AREAS:
        candidates.append((KIND_RETAINED, places.storage, (TENANTS_DIR, tenant, area, age)))
        candidates.append((KIND_STAGING, places.storage, (TENANTS_DIR, tenant, area, part)))
    for name in list_dir(places.storage, (QUARANTINE_DIR,)):
        kind = quarantine_kind(name, batch_id, tenant)
        if kind is not None:
            candidates.append((kind, places.storage, (QUARANTINE_DIR, name)))
    found = [
        Copy(kind, root.joinpath(*parts))
        for kind, root, parts in candidates
        if is_regular(root, parts)
    ]
    for top in (batch_id, *opening_dirs(batch_id, places.work_dir)):
        found.extend(
            Copy(KIND_PLAINTEXT, places.work_dir.joinpath(*parts))
            for parts in regular_files_below(places.work_dir, (top,))
        )
    found.sort(key=lambda c: (_RANK[c.kind], str(c.path)))
    return found


def quarantine_kind(name: str, batch_id: str, tenant: str) -> str | None:
    """The kind of copy the quarantined file ``name`` is of ``tenant``'s ``batch_id``, or None.

    The name is parsed whole (``<tenant>--<label>--<stamp>--<batch>.age[.part]``):
    another tenant whose name begins like this one's is never matched.
    """
    match = _QUARANTINE_RE.fullmatch(name)
    if match is None or match["tenant"] != tenant:
        return None
    if match["name"] == batch_id + AGE_SUFFIX:
        return KIND_QUARANTINE
    if match["name"] == batch_id + AGE_SUFFIX + PART_SUFFIX:
        return KIND_STAGING
    return None


def opening_dirs(batch_id: str, work_dir: Path) -> list[str]:
    """The names of ``batch_id``'s interrupted openings in the work directory.

    Raises:
        ErasureError: a ``.opening-…`` entry that names no batch (whose plaintext
            it holds nobody can tell), or that is not a directory.
    """
    mine: list[str] = []
    for name in list_dir(work_dir, ()):
        if not name.startswith(OPENING_PREFIX):
            continue
        owner = opening_of(name)
        if owner is None:
            raise ErasureError(
                _(
                    "{path} is an interrupted opening of an unknown batch; no batch is"
                    " erased while it exists"
                ).format(path=work_dir / name),
                hint=_(
                    "its files are the plaintext of one batch: find out which (the custody"
                    " log, the file names), rename it to .opening-BATCH-old, then run erase again"
                ),
            )
        if owner == batch_id:
            mode = os.lstat(work_dir / name).st_mode  # the trusted root's own entry
            if stat.S_ISLNK(mode):
                raise link_error(work_dir / name)
            if not stat.S_ISDIR(mode):
                raise ErasureError(
                    _("{path} is not a directory; refusing to erase").format(path=work_dir / name),
                    hint=_("move it out of the work directory after checking it"),
                )
            mine.append(name)
    return mine


def measure(
    copies: list[Copy], places: Places, progress: Progress | None = None
) -> list[ErasureItem]:
    """Size and SHA-256 of every copy, streamed, never through a link.

    A copy that vanished since :func:`find_copies` is left out.

    Raises:
        ErasureError: a path is outside its root, or not a regular file any more.
        OSError: a copy cannot be read.
    """
    items: list[ErasureItem] = []
    for found in copies:
        root = places.root_of(found.path)
        parts = parts_below(found.path, root)
        with parent_fd(root, parts[:-1]) as dir_fd:
            if dir_fd is None:
                continue
            try:
                fd = os.open(parts[-1], READ_FLAGS, dir_fd=dir_fd)
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise os_error(_("{path} cannot be read").format(path=found.path), exc) from None
            try:
                size, digest = hash_fd(fd, found.path, progress)
            finally:
                os.close(fd)
        items.append(ErasureItem(found.kind, str(found.path), size, digest))
    return items


def wipe(
    items: tuple[ErasureItem, ...],
    batch_id: str,
    places: Places,
    *,
    passes: int,
    progress: Progress | None = None,
) -> None:
    """Overwrite and unlink every recorded item still present, then remove the work trees.

    Args:
        items: the recorded items (their hashes were taken before).
        batch_id: the batch; ``<work_dir>/<batch_id>/`` and its interrupted
            openings ``<work_dir>/.opening-<batch_id>-…/`` are removed once emptied.
        places: the configured roots.
        passes: how many times each regular file is overwritten with zeros.
        progress: called with the bytes overwritten.

    Raises:
        ErasureError: something could not be overwritten or removed, a symbolic
            link is in the way, or a file has a hard link that is not a
            recorded copy (overwriting it would change a file outside the
            batch; unlinking alone would leave the data there). What was
            removed stays removed; the next run continues.
    """
    located = [(item, places.root_of(Path(item.path))) for item in items]
    wiper = Wiper(passes, progress)
    for item, root in located:
        wiper.count_links(root, parts_below(Path(item.path), root))
    for item, root in sorted(located, key=lambda pair: _RANK.get(pair[0].kind, 0)):
        parts = parts_below(Path(item.path), root)
        with parent_fd(root, parts[:-1]) as dir_fd:
            if dir_fd is not None:
                wiper.wipe_entry(dir_fd, parts[-1], Path(item.path))
    for top in (batch_id, *opening_dirs(batch_id, places.work_dir)):
        wiper.remove_tree(places.work_dir, top)


def shred_tree(directory: Path, *, passes: int = 1) -> None:
    """Overwrite every regular file in ``directory`` with zeros, then remove the tree.

    For plaintext ``open`` wrote and abandons (its own private directory): links
    inside go as links, and a file is overwritten even when it has other names
    (they would be names of the plaintext). A missing directory is fine.

    Raises:
        ErasureError: something could not be overwritten or removed.
    """
    Wiper(passes, None, own=True).remove_tree(directory.parent, directory.name)


def remaining(items: tuple[ErasureItem, ...], batch_id: str, places: Places) -> list[str]:
    """Every recorded path, and the batch's work directories, that still exist (``lstat``)."""
    paths = [item.path for item in items] + [str(places.work_dir / batch_id)]
    paths += [
        str(places.work_dir / name)
        for name in list_dir(places.work_dir, ())
        if opening_of(name) == batch_id
    ]
    return [path for path in paths if exists(path)]


def unrecorded(copies: list[Copy], items: tuple[ErasureItem, ...]) -> list[Copy]:
    """Copies found now that the journal does not list (they appeared after it was written)."""
    known = {item.path for item in items}
    return [found for found in copies if str(found.path) not in known]
