"""Custody failures, one base class for the package.

Messages name what failed and where (a field, a line number, a fingerprint);
they never carry key material or a signature's secret inputs.
"""


class CustodyError(Exception):
    """Base class of every failure raised by the custody package."""


class KeyFormatError(CustodyError):
    """A key is not an Ed25519 key in a supported OpenSSH or PKCS#8 encoding."""


class SignatureError(CustodyError):
    """A signed record does not verify: bad signature, wrong signer or wrong kind."""


class RecordError(CustodyError):
    """A record or JSON document is malformed, not canonical or too large."""


class ChainError(CustodyError):
    """A hash-chained log or one of its entries is malformed or broken."""
