"""``lgwan-gateway dvd-import``: take a batch from DVD into the print-site spool.

A disc written by ``lgwan-client dvd`` (docs/FORMAT.md, "DVD images") holds at
its root ``DISC.json`` (which batch, which part of how many, the envelope's size
and SHA-256, the files on this disc), ``SHA256SUMS`` (every other file, and on
split sets the whole envelope too), ``README.txt`` and the envelope: whole as
``<batch>.age`` or, split across discs, as byte ranges ``<batch>.age.001`` …

Everything on a disc is hostile until verified. In order:

1. every source is read (:mod:`gateway.dvd_disc`: an ISO image through its
   UDF or Joliet names; a mounted disc or copied files as a directory; a
   directory of ``.iso`` images for a split set); every name on the disc must
   be a safe file name; a disc without ``DISC.json`` is foreign;
2. ``DISC.json`` is validated strictly; a ``7z`` disc is refused (it is for
   contractors without our tools: 7-Zip opens it with the passphrase);
3. a split set must be complete: the same batch and envelope on every disc,
   each part exactly once;
4. every file on a disc must be listed in ``SHA256SUMS``, every listed file must
   be there (except the whole envelope's line on split discs) and match;
5. the envelope is reassembled by streaming the parts in order into
   :meth:`gateway.spool.Spool.deliver` (each part checked against
   ``SHA256SUMS`` as it passes, the whole against ``DISC.json``), and the
   complete copy must pass :func:`gateway.envelope_check.check_envelope` (the
   forwarding pipeline's quarantine rules) before it is published.

Any failure is a :class:`~gateway.dvd_disc.DiscError` (or a spool error) and
leaves nothing in the spool. A ``7z`` disc is refused with a hint: it holds a
7-Zip archive of the plaintext files for contractors without lgwan tools, not
an age envelope, so there is nothing here to check or spool. A batch already
in the spool with the same SHA-256 and tenant is an idempotent success; a
different one under the same id is refused.
"""

import contextlib
import hashlib
import io
import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, ExitStack
from dataclasses import dataclass, field
from pathlib import Path

from gateway.dvd_disc import (
    DISC_MANIFEST_NAME,
    KIND_7Z,
    MAX_DISC_JSON_BYTES,
    MAX_SUMS_BYTES,
    SUMS_NAME,
    DiscError,
    DiscManifest,
    Medium,
    Readable,
    open_media,
    parse_disc_manifest,
    parse_sums,
)
from gateway.envelope_check import _, check_envelope
from gateway.spool import Arrival, Spool, SpoolConflictError

CHANNEL = "dvd"
_PIECE_RE = re.compile(r"^\.([0-9]{3})$")
_BLOCK = 1 << 20

Progress = Callable[[int], None]
ProgressFactory = Callable[[str, int], AbstractContextManager[Progress]]


@dataclass
class ImportNotes:
    """What is known about the discs so far (for the audit record of a refusal)."""

    batch_id: str | None = None
    serials: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Imported:
    """A batch registered in the spool (or found there already)."""

    arrival: Arrival
    already_present: bool
    serials: tuple[str, ...]
    labels: tuple[str, ...]
    image_sha256s: tuple[str, ...]


# -- verification ----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Disc:
    medium: Medium
    manifest: DiscManifest
    sums: dict[str, str]
    entries: dict[str, int]


@dataclass(frozen=True)
class _Piece:
    disc: _Disc
    name: str
    size: int
    sha256: str


def _read_small(medium: Medium, name: str, limit: int) -> bytes:
    with medium.open(name) as handle:
        data = handle.read(limit + 1)
    if len(data) > limit:
        raise DiscError(
            _("{origin}: {name} is larger than {limit} bytes").format(
                origin=medium.origin, name=name, limit=limit
            )
        )
    return data


def _read_disc(medium: Medium, notes: ImportNotes) -> _Disc:
    entries = medium.entries()
    if DISC_MANIFEST_NAME not in entries:
        raise DiscError(
            _("{origin}: no {name}: not a disc written by lgwan-client dvd").format(
                origin=medium.origin, name=DISC_MANIFEST_NAME
            ),
            hint=_("a foreign or damaged disc; ask the ward for a new one"),
        )
    manifest = parse_disc_manifest(
        _read_small(medium, DISC_MANIFEST_NAME, MAX_DISC_JSON_BYTES), medium.origin
    )
    notes.batch_id = notes.batch_id or manifest.batch_id
    if manifest.serial not in notes.serials:
        notes.serials.append(manifest.serial)
    if manifest.kind == KIND_7Z:
        raise DiscError(
            _("{origin}: disc {serial} is a 7z disc; dvd-import takes age discs only").format(
                origin=medium.origin, serial=manifest.serial
            ),
            hint=_(
                "this disc holds a 7-Zip archive for contractors without lgwan tools, not an age"
                " envelope: open it with 7-Zip and the passphrase from the paper notice, or ask"
                " the ward for an 'age' disc to import it"
            ),
        )
    if SUMS_NAME not in entries:
        raise DiscError(
            _("{origin}: no {name} on the disc").format(origin=medium.origin, name=SUMS_NAME)
        )
    sums = parse_sums(_read_small(medium, SUMS_NAME, MAX_SUMS_BYTES), medium.origin)
    return _Disc(medium, manifest, sums, entries)


def _check_set(discs: list[_Disc]) -> None:
    """All discs belong to one batch and envelope, and every part is there exactly once."""
    first = discs[0].manifest
    by_part: dict[int, _Disc] = {}
    for disc in discs:
        m, origin = disc.manifest, disc.medium.origin
        if m.batch_id != first.batch_id:
            raise DiscError(
                _("{origin} holds batch {batch}, not {expected}").format(
                    origin=origin, batch=m.batch_id, expected=first.batch_id
                )
            )
        if (m.parts, m.envelope_size, m.envelope_sha256) != (
            first.parts,
            first.envelope_size,
            first.envelope_sha256,
        ):
            raise DiscError(
                _("{origin} belongs to another disc set of batch {batch}").format(
                    origin=origin, batch=m.batch_id
                )
            )
        if m.part in by_part:
            raise DiscError(
                _("part {part} of {parts} is given twice ({first} and {second})").format(
                    part=m.part, parts=m.parts, first=by_part[m.part].medium.origin, second=origin
                )
            )
        by_part[m.part] = disc
    missing = [str(n) for n in range(1, first.parts + 1) if n not in by_part]
    if missing:
        raise DiscError(
            _("batch {batch} is split over {parts} discs; part(s) {missing} missing").format(
                batch=first.batch_id, parts=first.parts, missing=", ".join(missing)
            ),
            hint=_("give every part: dvd-import A-1ofN.iso … A-NofN.iso (or a directory of them)"),
        )
    discs.sort(key=lambda d: d.manifest.part)


def _check_listing(disc: _Disc) -> list[_Piece]:
    """Match the disc's files, SHA256SUMS and DISC.json; return the envelope pieces on it."""
    m, origin, sums, entries = disc.manifest, disc.medium.origin, disc.sums, disc.entries
    whole = m.batch_id + ".age"
    for name in sorted(entries):
        if name != SUMS_NAME and name not in sums:
            raise DiscError(
                _("{origin}: {name} is on the disc but not listed in {sums}").format(
                    origin=origin, name=name, sums=SUMS_NAME
                )
            )
    for name in sorted(sums):
        if name not in entries and not (name == whole and m.parts > 1):
            raise DiscError(
                _("{origin}: {sums} lists {name}, which is not on the disc").format(
                    origin=origin, sums=SUMS_NAME, name=name
                )
            )
    if sums.get(whole) != m.envelope_sha256:
        raise DiscError(
            _("{origin}: {sums} and {disc} disagree on the envelope's SHA-256").format(
                origin=origin, sums=SUMS_NAME, disc=DISC_MANIFEST_NAME
            )
        )
    listed = {f.name: f for f in m.files}
    for entry in m.files:
        if entry.name not in entries:
            raise DiscError(
                _("{origin}: {disc} lists {name}, not on the disc").format(
                    origin=origin, disc=DISC_MANIFEST_NAME, name=entry.name
                )
            )
        if entries[entry.name] != entry.size or sums[entry.name] != entry.sha256:
            raise DiscError(
                _("{origin}: {name} differs between the disc, {sums} and {disc}").format(
                    origin=origin, name=entry.name, sums=SUMS_NAME, disc=DISC_MANIFEST_NAME
                )
            )
    pieces: list[_Piece] = []
    for name in sorted(entries):
        if not name.startswith(whole):
            continue
        if name not in listed:
            raise DiscError(
                _("{origin}: {name} is not listed in {disc}").format(
                    origin=origin, name=name, disc=DISC_MANIFEST_NAME
                )
            )
        pieces.append(_Piece(disc, name, entries[name], sums[name]))
    return pieces


def _verify_small_files(disc: _Disc, pieces: list[_Piece]) -> None:
    """Hash every listed file except the envelope pieces (those are hashed as they stream)."""
    skip = {p.name for p in pieces}
    for name in sorted(disc.entries):
        if name == SUMS_NAME or name in skip:
            continue
        digest = hashlib.sha256()
        with disc.medium.open(name) as handle:
            while data := handle.read(_BLOCK):
                digest.update(data)
        if digest.hexdigest() != disc.sums[name]:
            raise DiscError(
                _("{origin}: {name} does not match {sums} (a damaged disc)").format(
                    origin=disc.medium.origin, name=name, sums=SUMS_NAME
                )
            )


def _order_pieces(pieces: list[_Piece], first: DiscManifest) -> list[_Piece]:
    """The envelope's pieces in order: one whole ``.age``, or ``.001`` … ``.NNN`` complete."""
    whole = first.batch_id + ".age"
    if not pieces:
        raise DiscError(
            _("no envelope file ({whole} or {whole}.001 …) on the disc(s)").format(whole=whole)
        )
    if len(pieces) == 1 and pieces[0].name == whole and first.parts == 1:
        ordered = pieces
    else:
        numbered: dict[int, _Piece] = {}
        for piece in pieces:
            match = _PIECE_RE.fullmatch(piece.name[len(whole) :])
            if match is None:
                origin = piece.disc.medium.origin
                raise DiscError(
                    _("{origin}: unexpected envelope file {name}").format(
                        origin=origin, name=piece.name
                    )
                )
            numbered[int(match.group(1))] = piece
        if sorted(numbered) != list(range(1, len(numbered) + 1)):
            raise DiscError(
                _("the envelope pieces of {batch} are not .001 … .NNN in full").format(
                    batch=first.batch_id
                )
            )
        ordered = [numbered[n] for n in sorted(numbered)]
    if sum(p.size for p in ordered) != first.envelope_size:
        raise DiscError(
            _("the envelope pieces add up to {size} bytes, {disc} says {expected}").format(
                size=sum(p.size for p in ordered),
                disc=DISC_MANIFEST_NAME,
                expected=first.envelope_size,
            )
        )
    return ordered


class _PieceReader(io.RawIOBase):
    """The envelope reassembled: the pieces in order, each checked against SHA256SUMS."""

    def __init__(self, pieces: list[_Piece], progress: Progress) -> None:
        super().__init__()
        self._pieces = iter(pieces)
        self._progress = progress
        self._stack = ExitStack()
        self._current: tuple[_Piece, Readable] | None = None
        self._digest = hashlib.sha256()
        self._count = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        while True:
            if self._current is None:
                piece = next(self._pieces, None)
                if piece is None:
                    return 0
                handle = self._stack.enter_context(piece.disc.medium.open(piece.name))
                self._current, self._digest, self._count = (piece, handle), hashlib.sha256(), 0
            piece, handle = self._current
            data = handle.read(min(len(buffer), piece.size - self._count + 1))
            if data:
                self._count += len(data)
                if self._count > piece.size:
                    origin = piece.disc.medium.origin
                    raise DiscError(
                        _("{origin}: {name} is longer than listed").format(
                            origin=origin, name=piece.name
                        )
                    )
                self._digest.update(data)
                buffer[: len(data)] = data
                self._progress(len(data))
                return len(data)
            if self._count != piece.size or self._digest.hexdigest() != piece.sha256:
                raise DiscError(
                    _("{origin}: {name} does not match {sums} (a damaged disc)").format(
                        origin=piece.disc.medium.origin, name=piece.name, sums=SUMS_NAME
                    )
                )
            self._stack.close()
            self._current = None

    def close(self) -> None:
        self._stack.close()
        super().close()


# -- the import ------------------------------------------------------------------------------


def import_discs(
    sources: Sequence[Path],
    spool: Spool,
    *,
    tenant: str,
    min_work_factor: int,
    max_work_factor: int,
    notes: ImportNotes | None = None,
    progress: ProgressFactory | None = None,
) -> Imported:
    """Verify the discs in ``sources`` and register their batch in ``spool`` (channel ``dvd``).

    Args:
        sources: ISO images, disc directories, or directories of ISO images.
        spool: the print-site spool.
        tenant: the tenant the batch is registered for.
        min_work_factor: the envelope check's lowest scrypt work factor.
        max_work_factor: the envelope check's highest scrypt work factor.
        notes: filled with the batch id and serials as they are learnt.
        progress: makes a byte progress callback for the envelope copy.

    Returns:
        The arrival; ``already_present`` when the same batch was in the spool.

    Raises:
        DiscError: the disc(s) are refused, with the reason.
        SpoolError: the spool holds another batch under this id, or cannot be written.
        OSError: a source cannot be read.
    """
    notes = notes if notes is not None else ImportNotes()
    with ExitStack() as stack:
        discs = [_read_disc(medium, notes) for medium in open_media(sources, stack)]
        _check_set(discs)
        first = discs[0].manifest
        pieces: list[_Piece] = []
        for disc in discs:
            on_disc = _check_listing(disc)
            _verify_small_files(disc, on_disc)
            pieces.extend(on_disc)
        ordered = _order_pieces(pieces, first)
        serials = tuple(d.manifest.serial for d in discs)
        labels = tuple(d.medium.label for d in discs if d.medium.label is not None)
        present = spool.get(first.batch_id)
        if present is not None:
            _refuse_conflict(present, first, tenant)
            return Imported(present, True, serials, labels, ())
        images = tuple(_sha256_file(d.medium.image) for d in discs if d.medium.image is not None)
        detail: dict[str, object] = {
            "serials": list(serials),
            "labels": list(labels),
            "image_sha256s": list(images),
            "created_at": first.created_at.isoformat(),
            "created_by": first.created_by,
        }

        def verify(part: Path) -> None:
            result = check_envelope(
                part,
                min_work_factor=min_work_factor,
                max_work_factor=max_work_factor,
                expected_size=first.envelope_size,
                expected_sha256=first.envelope_sha256,
            )
            if not result.ok:
                raise DiscError(
                    _("the envelope on the disc fails the envelope check: {verdict}").format(
                        verdict=result.shown
                    ),
                    hint=_("the disc does not hold a sealed batch; ask the ward for a new disc"),
                )

        bar = progress or _no_progress
        with bar(_("importing"), first.envelope_size) as advance:
            reader = io.BufferedReader(_PieceReader(ordered, advance), _BLOCK)
            with reader:
                arrival = spool.deliver(
                    first.batch_id,
                    reader,
                    tenant=tenant,
                    channel=CHANNEL,
                    expected_size=first.envelope_size,
                    expected_sha256=first.envelope_sha256,
                    source_detail=detail,
                    verify=verify,
                )
    return Imported(arrival, False, serials, labels, images)


def _refuse_conflict(present: Arrival, first: DiscManifest, tenant: str) -> None:
    """A batch under this id is in the spool: fine if it is this one, else refuse."""
    if present.sha256 != first.envelope_sha256:
        raise SpoolConflictError(
            _(
                "{batch} is already in the spool with a different SHA-256"
                " ({present}…, this disc {disc}…); nothing was overwritten"
            ).format(
                batch=first.batch_id,
                present=present.sha256[:16],
                disc=first.envelope_sha256[:16],
            ),
            hint=_("ask the ward which is the sealed batch"),
        )
    if present.tenant != tenant:
        raise SpoolConflictError(
            _("{batch} is already in the spool for tenant {present}, not {tenant}").format(
                batch=first.batch_id, present=present.tenant, tenant=tenant
            ),
            hint=_("ask the ward which tenant the batch belongs to"),
        )


@contextlib.contextmanager
def _no_progress(_label: str, _total: int) -> Iterator[Progress]:
    yield lambda _n: None


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while data := handle.read(_BLOCK):
            digest.update(data)
    return digest.hexdigest()
