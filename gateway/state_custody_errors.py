"""The custody tables' errors (:mod:`gateway.state_custody`, re-exported there and by
:mod:`gateway.state`): each says what was refused and what to do, in the chosen language."""

from __future__ import annotations

from typing import TYPE_CHECKING

from gateway.i18n import _
from gateway.state_batches import StateError

if TYPE_CHECKING:
    from gateway.state_custody import ErasureRecord


class DuplicateStaffError(StateError):
    """A staff member of that name exists already (disabled ones too: names are never reused)."""


class UnknownStaffError(StateError):
    """No staff member of that name."""


class ReprintReasonRequiredError(StateError):
    """A second or later print of a file was recorded without a reason."""

    def __init__(self, batch_id: str, file_name: str, previous: int) -> None:
        """Say which file of which batch was printed ``previous`` times already."""
        super().__init__(
            _(
                "{file} of batch {batch} was printed {times} time(s) already;"
                " a reprint needs a reason"
            ).format(file=file_name, batch=batch_id, times=previous),
            hint=_("give --reason TEXT saying why it is printed again"),
        )
        self.batch_id = batch_id
        self.file_name = file_name
        self.previous = previous


class ReopenReasonRequiredError(StateError):
    """A second or later opening of a batch was recorded without a reason."""

    def __init__(self, batch_id: str, previous: int) -> None:
        """Say which batch was opened ``previous`` times already."""
        super().__init__(
            _(
                "batch {batch} was opened {times} time(s) already; opening again needs a reason"
            ).format(batch=batch_id, times=previous),
            hint=_("give --reason TEXT saying why it is opened again"),
        )
        self.batch_id = batch_id
        self.previous = previous


class BatchErasedError(StateError):
    """An opening of a batch whose erasure is recorded (started or finished): never recorded."""

    def __init__(self, batch_id: str) -> None:
        """Name the batch."""
        super().__init__(
            _(
                "batch {batch} is erased or being erased at this site; its opening is not recorded"
            ).format(batch=batch_id),
            hint=_("ask the ward to send the batch again if it is still needed"),
        )
        self.batch_id = batch_id


class ErasureFinishedError(StateError):
    """The batch's erasure has finished already: it is not started (or finished) again."""

    def __init__(self, record: ErasureRecord) -> None:
        """Name the batch and its certificate."""
        super().__init__(
            _("batch {batch} was erased already (certificate {certificate})").format(
                batch=record.batch_id, certificate=record.certificate
            )
        )
        self.record = record
