"""The batch envelope: age v1 (passphrase recipient), passphrase, manifest.

Pure: no I/O beyond the streams it is given. Spec: https://age-encryption.org/v1
"""

from envelope.age import (
    DecryptingReader,
    EncryptingWriter,
    HeaderInfo,
    decrypt,
    encrypt,
    read_header,
)
from envelope.errors import (
    ArmorError,
    EnvelopeError,
    HeaderError,
    HmacError,
    ManifestError,
    NoMatchError,
    PassphraseError,
    PayloadError,
)

__all__ = [
    "ArmorError",
    "DecryptingReader",
    "EncryptingWriter",
    "EnvelopeError",
    "HeaderError",
    "HeaderInfo",
    "HmacError",
    "ManifestError",
    "NoMatchError",
    "PassphraseError",
    "PayloadError",
    "decrypt",
    "encrypt",
    "read_header",
]
