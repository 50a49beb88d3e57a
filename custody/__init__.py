"""Custody: Ed25519-signed records and append-only hash-chained logs.

Pure and shared by both sides: it reads and writes only the bytes and streams
it is given. Signed records (:mod:`custody.records`) carry the gateway's
receipts and status statements, the contractor's erasure certificates and log
checkpoints; hash-chained JSON-lines logs (:mod:`custody.chain`) carry the
gateway's audit log and the ward's hand-over ledger. Keys are Ed25519 in
OpenSSH formats (:mod:`custody.keys`), named by their ``SHA256:…`` fingerprint.
The erasure certificate's body rules, which the print site, the gateway and the
ward all apply, are :mod:`custody.erasure_certificate`.
"""

from custody.canonical import canonical_json, parse_json_strict
from custody.chain import (
    GENESIS,
    ChainHead,
    ChainWriter,
    VerifyReport,
    make_checkpoint,
    make_entry,
    parse_entry,
    recover_head,
    verify_chain,
    verify_checkpoint,
)
from custody.erasure_certificate import (
    MAX_CERTIFICATE_BYTES,
    BodyError,
    ErasedItem,
    ErasureBody,
    check_erasure_body,
)
from custody.errors import ChainError, CustodyError, KeyFormatError, RecordError, SignatureError
from custody.keys import (
    fingerprint,
    generate_private_key,
    load_private_key,
    load_public_key,
    private_key_to_openssh,
    public_key_to_openssh,
)
from custody.records import (
    KIND_CHECKPOINT,
    KIND_ERASURE_CERTIFICATE,
    KIND_RECEIPT,
    KIND_STATUS,
    dumps_record,
    loads_record,
    sign_record,
    verify_record,
)

__all__ = [
    "GENESIS",
    "KIND_CHECKPOINT",
    "KIND_ERASURE_CERTIFICATE",
    "KIND_RECEIPT",
    "KIND_STATUS",
    "MAX_CERTIFICATE_BYTES",
    "BodyError",
    "ChainError",
    "ChainHead",
    "ChainWriter",
    "CustodyError",
    "ErasedItem",
    "ErasureBody",
    "KeyFormatError",
    "RecordError",
    "SignatureError",
    "VerifyReport",
    "canonical_json",
    "check_erasure_body",
    "dumps_record",
    "fingerprint",
    "generate_private_key",
    "load_private_key",
    "load_public_key",
    "loads_record",
    "make_checkpoint",
    "make_entry",
    "parse_entry",
    "parse_json_strict",
    "private_key_to_openssh",
    "public_key_to_openssh",
    "recover_head",
    "sign_record",
    "verify_chain",
    "verify_checkpoint",
    "verify_record",
]
