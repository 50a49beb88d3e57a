#!/usr/bin/env python3
"""Container health check: ``lgwan-healthcheck PORT`` exits 0 while a TCP socket listens on PORT.

It reads the kernel's socket tables (``/proc/net/tcp``, ``/proc/net/tcp6``) of
the container instead of connecting: a connection to the SFTP service is an
audited event, and a probe every 30 seconds would bury the real ones in the
audit log. Stdlib only; installed into the image as ``/usr/local/bin/lgwan-healthcheck``.
"""

import sys
from pathlib import Path

TABLES = (Path("/proc/net/tcp"), Path("/proc/net/tcp6"))
TCP_LISTEN = "0A"
"""The ``st`` column value of a listening socket (include/net/tcp_states.h)."""


def listening(port: int, tables: tuple[Path, ...] = TABLES) -> bool:
    """True when one of ``tables`` holds a socket in LISTEN state on ``port``."""
    for table in tables:
        try:
            rows = table.read_text(encoding="ascii").splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            if len(fields) < 4 or fields[3] != TCP_LISTEN:
                continue
            _, _, hex_port = fields[1].rpartition(":")
            if int(hex_port, 16) == port:
                return True
    return False


def main(argv: list[str]) -> int:
    """Exit 0 when PORT is listening, 1 when not, 2 on a bad command line."""
    if len(argv) != 1 or not argv[0].isdigit() or not 0 < int(argv[0]) < 65536:
        print("usage: lgwan-healthcheck PORT", file=sys.stderr)
        return 2
    port = int(argv[0])
    if listening(port):
        return 0
    print(f"lgwan-healthcheck: nothing listens on TCP port {port}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
