"""Envelope failures, one class per failure class of the C2SP age vectors.

The vectors' `expect` values map one to one: ``header failure`` ->
:class:`HeaderError`, ``no match`` -> :class:`NoMatchError`, ``HMAC failure`` ->
:class:`HmacError`, ``payload failure`` -> :class:`PayloadError`, ``armor
failure`` -> :class:`ArmorError`. Messages never contain a passphrase or key.
"""


class EnvelopeError(Exception):
    """Base class of every failure raised by the envelope package."""


class HeaderError(EnvelopeError):
    """The age header is malformed, unsupported or asks for too much work."""


class NoMatchError(EnvelopeError):
    """No stanza could be opened with the given passphrase."""


class HmacError(EnvelopeError):
    """The header MAC does not verify: the header was changed."""


class PayloadError(EnvelopeError):
    """The STREAM payload failed to authenticate, is truncated or has trailing data."""


class ArmorError(EnvelopeError):
    """The ASCII armor is not strictly canonical."""


class PassphraseError(EnvelopeError):
    """A typed passphrase fails its check group (a typo), before any scrypt work."""


class ManifestError(EnvelopeError):
    """A manifest or a name inside it is malformed or unsafe."""
