"""client.durable: directory fsync for names just created or renamed."""

from pathlib import Path

import pytest

from client.durable import fsync_dir


def test_fsync_dir_syncs_a_directory_and_refuses_anything_else(tmp_path: Path) -> None:
    """A directory is synced (no error); a regular file or a missing path raises OSError."""
    (tmp_path / "new").write_bytes(b"x")
    fsync_dir(tmp_path)
    with pytest.raises(NotADirectoryError):
        fsync_dir(tmp_path / "new")
    with pytest.raises(FileNotFoundError):
        fsync_dir(tmp_path / "missing")
