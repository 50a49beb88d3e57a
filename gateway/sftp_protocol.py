"""The SFTP wire protocol of one ``sftp`` channel: paramiko's request loop, hardened.

paramiko's :class:`~paramiko.sftp_server.SFTPServer` reads packets and hands
requests to :class:`gateway.sftp_fs._SFTP` (the virtual filesystem).
:class:`SFTPProtocol` keeps its loop and puts the drop service's rules on the
wire itself, for a client that sends hand-made packets (issue 8 §1):

- **Packet size.** A packet is at most :data:`MAX_PACKET_BYTES` (a 256 KiB
  write plus its header, as OpenSSH's sftp-server). A longer declared length
  ends the session from the 4-byte header: nothing of it is read or buffered
  (paramiko alone accepts 16 MiB and gathers it by repeated copying).
- **Order.** The first packet must be INIT, or that channel is closed.
- **Unknown requests.** INIT again, reply types, unassigned numbers and
  extensions other than ``posix-rename@openssh.com`` get OP_UNSUPPORTED.
- **Attributes.** Attributes whose extended-pair count could not fit in the
  packet are refused (``bad_attributes``) before paramiko parses them: it
  would loop over a count of up to 2^32 - 1, holding the interpreter for hours.
- **Handles.** A request naming a handle this session did not hand out
  (another session's bytes, a guess) gets BAD_MESSAGE before paramiko sees it
  — paramiko answers FSETSTAT on a bad handle with a malformed packet. Open
  directory listings are capped like open files (:data:`MAX_OPEN_HANDLES`).
- **Audit.** Each such protocol error is audited ``sftp_refused`` (op, reason)
  — the first :data:`MAX_AUDITED_ERRORS` of a session; ``session_closed``
  counts them all (``protocol_errors``) — and a session reaching
  :data:`MAX_PROTOCOL_ERRORS` is closed.
- **Idleness.** Time spent waiting for the client to read the answers is not
  work: a client that stops reading is cut at the idle timeout like one that
  stops writing (see ``Connection.busy`` in :mod:`gateway.server`). Once the
  channel is closed, requests still buffered are dropped, not served.
- **Answers in batches.** While more requests are already buffered, answers
  are queued (up to :data:`FLUSH_BYTES`) and sent together before the loop
  would wait for the client: pipelined uploads cost one SSH packet per run of
  statuses, and no answer ever waits on the client.
"""

import contextlib
import struct
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import paramiko
from paramiko.sftp import (
    CMD_CLOSE,
    CMD_EXTENDED,
    CMD_FSETSTAT,
    CMD_FSTAT,
    CMD_INIT,
    CMD_LSTAT,
    CMD_MKDIR,
    CMD_NAME,
    CMD_NAMES,
    CMD_OPEN,
    CMD_OPENDIR,
    CMD_READ,
    CMD_READDIR,
    CMD_READLINK,
    CMD_REALPATH,
    CMD_REMOVE,
    CMD_RENAME,
    CMD_RMDIR,
    CMD_SETSTAT,
    CMD_STAT,
    CMD_SYMLINK,
    CMD_VERSION,
    CMD_WRITE,
)

from gateway.policy import PolicyError
from gateway.sftp_fs import (
    _SFTP,
    MAX_OPEN_HANDLES,
    SFTP_OP_UNSUPPORTED,
    SFTP_PERMISSION_DENIED,
    _CertificateHandle,
    _Status,
)

if TYPE_CHECKING:
    from gateway.sftp_server import _Interface

MAX_PACKET_BYTES = 256 * 1024 + 1024
"""Largest SFTP packet accepted (length field value): a 256 KiB WRITE and its header."""
MAX_PROTOCOL_ERRORS = 256
"""Protocol errors after which a session is closed."""
MAX_AUDITED_ERRORS = 32
"""Protocol errors audited one by one per session (the rest are counted)."""
SFTP_VERSION = 3
FLUSH_BYTES = 64 * 1024
"""Answers are held back while more requests are already waiting, up to this many bytes,
and then sent together: one SSH packet (one encryption, one ``send``) for a run of
pipelined WRITE statuses instead of one each."""
EXTENSIONS = ("posix-rename@openssh.com", "1")
"""Advertised in VERSION: the one extension served."""
SFTP_BAD_MESSAGE: int = paramiko.SFTP_BAD_MESSAGE

_REQUESTS = frozenset(
    {
        CMD_OPEN, CMD_CLOSE, CMD_READ, CMD_WRITE, CMD_LSTAT, CMD_FSTAT, CMD_SETSTAT,
        CMD_FSETSTAT, CMD_OPENDIR, CMD_READDIR, CMD_REMOVE, CMD_MKDIR, CMD_RMDIR,
        CMD_REALPATH, CMD_STAT, CMD_RENAME, CMD_READLINK, CMD_SYMLINK, CMD_EXTENDED,
    }
)  # fmt: skip
_FILE_HANDLE_REQUESTS = frozenset({CMD_READ, CMD_WRITE, CMD_FSTAT, CMD_FSETSTAT})
_ATTRIBUTE_REQUESTS = frozenset({CMD_OPEN, CMD_SETSTAT, CMD_FSETSTAT, CMD_MKDIR})
_ATTR = paramiko.SFTPAttributes
_FIXED_ATTRIBUTE_BYTES = (
    (_ATTR.FLAG_SIZE, 8), (_ATTR.FLAG_UIDGID, 8), (_ATTR.FLAG_PERMISSIONS, 4),
    (_ATTR.FLAG_AMTIME, 8),
)  # fmt: skip
_MIN_EXTENDED_PAIR_BYTES = 8
"""An extended attribute is two SSH strings: at least two 4-byte lengths."""


class ProtocolError(Exception):
    """The channel cannot go on (its session ends and the channel is closed)."""


def attributes_fit(kind: int, msg: paramiko.Message) -> bool:
    """Whether the attributes of an OPEN, SETSTAT, FSETSTAT or MKDIR request fit its packet.

    Reads a copy of ``msg``; only the extended-pair count can make parsing costly.
    """
    probe = paramiko.Message(msg.asbytes())
    probe.get_int()  # the request number
    probe.get_binary()  # the path, or the handle
    if kind == CMD_OPEN:
        probe.get_int()  # the open flags
    flags = probe.get_int()
    probe.get_bytes(sum(size for flag, size in _FIXED_ATTRIBUTE_BYTES if flags & flag))
    if not flags & _ATTR.FLAG_EXTENDED:
        return True
    count: int = probe.get_int()
    left: int = len(probe.asbytes()) - probe.packet.tell()
    return count * _MIN_EXTENDED_PAIR_BYTES <= max(0, left)


def _op(kind: int) -> str:
    name: str | None = CMD_NAMES.get(kind)
    return name if name is not None else f"type_{kind}"


class SFTPProtocol(paramiko.SFTPServer):  # type: ignore[misc]  # paramiko is untyped
    """paramiko's SFTP loop with the rules of the module docstring."""

    def __init__(
        self, channel: paramiko.Channel, name: str, server: "_Interface", **kw: Any
    ) -> None:
        super().__init__(channel, name, server, **kw)
        self._conn = server.conn
        self._working = False
        self._outgoing: list[bytes] = []
        self._outgoing_bytes = 0

    # -- framing -----------------------------------------------------------------------------

    def _read_all(self, n: int) -> bytes:
        chunks = []
        while n > 0:
            if self._outgoing and not self.sock.recv_ready():
                self._flush()  # never wait for the client with answers held back
            chunk = self.sock.recv(n)
            if not chunk:
                raise EOFError()
            chunks.append(chunk)
            n -= len(chunk)
        return b"".join(chunks)

    def _read_packet(self) -> tuple[int, bytes]:
        if self.sock.closed:
            raise EOFError()  # requests still buffered after the close are not served
        size = struct.unpack(">I", self._read_all(4))[0]
        if size > MAX_PACKET_BYTES:
            self._note_error("packet", "packet_too_large", declared_bytes=size)
            with contextlib.suppress(Exception):
                self._flush()  # the answers to the requests before it
            raise ProtocolError(f"packet of {size} bytes declared")
        data = self._read_all(size)
        if not data:
            return 0, b""
        return data[0], data[1:]

    def _write_all(self, out: bytes) -> None:
        """Queue an answer; sent with the others once no request is waiting (or 64 KiB)."""
        self._outgoing.append(out)
        self._outgoing_bytes += len(out)
        if self._outgoing_bytes >= FLUSH_BYTES:
            self._flush()

    def _flush(self) -> None:
        out = b"".join(self._outgoing)
        self._outgoing.clear()
        self._outgoing_bytes = 0
        while out:
            with self._waiting_for_client():
                sent = self.sock.send(out)
            if sent <= 0:
                raise EOFError()
            self._conn.touch()
            out = out[sent:]

    @contextlib.contextmanager
    def _waiting_for_client(self) -> Iterator[None]:
        """While an answer waits for the client to read, the request is not work."""
        working = self._working
        if working:
            with self._conn.lock:
                self._conn.busy -= 1
        try:
            yield
        finally:
            if working:
                with self._conn.lock:
                    self._conn.busy += 1

    def _send_server_version(self) -> int:
        kind, data = self._read_packet()
        if kind != CMD_INIT:
            self._note_error("init", "not_init", request=_op(kind))
            raise ProtocolError("the first packet is not INIT")
        version = int(struct.unpack(">I", data[:4].ljust(4, b"\x00"))[0])
        msg = paramiko.Message()
        msg.add_int(SFTP_VERSION)
        msg.add(*EXTENSIONS)
        self._send_packet(CMD_VERSION, msg)
        return version

    # -- requests ----------------------------------------------------------------------------

    def _process(self, t: int, request_number: int, msg: paramiko.Message) -> None:
        self._conn.touch()
        with self._conn.lock:
            self._conn.busy += 1  # a long request (hashing at completion) is not idleness
        self._working = True
        try:
            self._dispatch(t, request_number, msg)
        except UnicodeDecodeError:
            sftp: _SFTP = self.server
            sftp.refuse("request", "", PolicyError("not_utf8", "path is not UTF-8"))
            self._send_status(request_number, SFTP_PERMISSION_DENIED)
        finally:
            self._working = False
            with self._conn.lock:
                self._conn.busy -= 1
            self._conn.touch()

    def _dispatch(self, t: int, request_number: int, msg: paramiko.Message) -> None:
        if t not in _REQUESTS:
            self._protocol_error(request_number, _op(t), "unknown_request", SFTP_OP_UNSUPPORTED)
        elif not self._own_handle(t, msg):
            self._protocol_error(
                request_number, _op(t), "bad_handle", SFTP_BAD_MESSAGE, "invalid handle"
            )
        elif t in _ATTRIBUTE_REQUESTS and not attributes_fit(t, msg):
            self._protocol_error(
                request_number, _op(t), "bad_attributes", SFTP_BAD_MESSAGE, "malformed attributes"
            )
        elif t == CMD_OPENDIR and len(self.folder_table) >= MAX_OPEN_HANDLES:
            sftp: _SFTP = self.server
            refused = PolicyError("too_many_handles", "too many open directories")
            self._send_status(request_number, sftp.refuse("opendir", msg.get_text(), refused))
        elif t == CMD_REALPATH:
            self._realpath(request_number, msg)
        elif t == CMD_EXTENDED:
            self._extended(request_number, msg)
        elif t != CMD_CLOSE or not self._close_certificate(request_number, msg):
            super()._process(t, request_number, msg)

    def _own_handle(self, t: int, msg: paramiko.Message) -> bool:
        """Whether a handle request names a handle of this session (non-handle requests: True)."""
        if t not in _FILE_HANDLE_REQUESTS and t not in (CMD_READDIR, CMD_CLOSE):
            return True
        handle = msg.get_binary()
        msg.rewind()
        msg.get_int()  # the request number, already read
        files: dict[bytes, object] = self.file_table
        folders: dict[bytes, object] = self.folder_table
        if t in _FILE_HANDLE_REQUESTS:
            return handle in files
        if t == CMD_READDIR:
            return handle in folders
        return handle in files or handle in folders

    def _realpath(self, request_number: int, msg: paramiko.Message) -> None:
        sftp: _SFTP = self.server
        resolved = sftp.resolve(msg.get_text())
        if isinstance(resolved, int):
            self._send_status(request_number, resolved)
        else:
            self._response(request_number, CMD_NAME, 1, resolved, "", paramiko.SFTPAttributes())

    def _close_certificate(self, request_number: int, msg: paramiko.Message) -> bool:
        """CLOSE of an uploaded certificate: answer with its outcome (paramiko always says OK).

        Returns:
            False for any other handle (the message is rewound for paramiko).
        """
        handle = msg.get_binary()
        target = self.file_table.get(handle)
        if not isinstance(target, _CertificateHandle):
            msg.rewind()
            msg.get_int()  # the request number, already read
            return False
        del self.file_table[handle]
        self._send_status(request_number, target.commit())
        return True

    def _extended(self, request_number: int, msg: paramiko.Message) -> None:
        sftp: _SFTP = self.server
        tag = msg.get_text()
        if tag == "posix-rename@openssh.com":
            old, new = msg.get_text(), msg.get_text()
            self._send_status(request_number, sftp.rename(old, new))
            return
        reason = "not_permitted" if tag == "check-file" else "unknown_extension"
        self._protocol_error(request_number, "extended", reason, SFTP_OP_UNSUPPORTED, extension=tag)

    # -- errors ------------------------------------------------------------------------------

    def _note_error(self, op: str, reason: str, **fields: object) -> None:
        """Count a protocol error; audit it while the session's first ones."""
        sftp: _SFTP = self.server
        sftp.protocol_errors += 1
        if sftp.protocol_errors > MAX_AUDITED_ERRORS:
            return
        with contextlib.suppress(Exception):  # the log reports its own breakage on the next emit
            sftp.audit("sftp_refused", op=op, reason=reason, **fields)

    def _protocol_error(
        self, request_number: int, op: str, reason: str, code: int, message: str | None = None,
        **fields: object,
    ) -> None:  # fmt: skip
        """Answer a request the protocol does not allow; close the channel after too many."""
        self._note_error(op, reason, **fields)
        self._send_status(request_number, code, message)
        sftp: _SFTP = self.server
        if sftp.protocol_errors == MAX_PROTOCOL_ERRORS:
            with contextlib.suppress(Exception):
                sftp.audit(
                    "sftp_refused", op="session", reason="too_many_errors",
                    count=sftp.protocol_errors,
                )  # fmt: skip
            with contextlib.suppress(Exception):
                self._flush()  # the answers so far, this one included
            self.sock.close()

    def _send_status(self, request_number: int, code: int, desc: str | None = None) -> None:
        if desc is None and isinstance(code, _Status):
            desc = code.message
        super()._send_status(request_number, int(code), desc)
