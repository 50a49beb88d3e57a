"""Reading a running site's audit log in integration tests (shared by the site harnesses)."""

import json
import time
from contextlib import suppress
from pathlib import Path
from typing import Any


class AuditReader:
    """Mixin for a harness whose ``root`` holds ``audit/audit.jsonl``."""

    root: Path

    def events(self, event: str | None = None, **match: object) -> list[dict[str, Any]]:
        """Audit records (optionally of one event, with matching fields)."""
        found = []
        for line in (self.root / "audit" / "audit.jsonl").read_bytes().splitlines():
            with suppress(ValueError):
                record = json.loads(line)
                if (event is None or record["event"] == event) and all(
                    record.get(k) == v for k, v in match.items()
                ):
                    found.append(record)
        return found

    def wait_event(self, event: str, timeout: float = 10, **match: object) -> dict[str, Any]:
        """The first matching audit record, waiting for it to be written."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.events(event, **match)
            if found:
                return found[0]
            assert time.monotonic() < deadline, f"no {event} {match} in the audit log"
            time.sleep(0.05)
