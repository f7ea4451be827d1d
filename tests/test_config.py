import os
import stat

from codelm.config import atomic_write_text


def test_atomically_written_files_are_readable_like_any_other(tmp_path):
    """A run's config.json must be readable by another user (e.g. `nobody` serving it from a Docker mount)."""
    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "config.json", "{}\n")
    finally:
        os.umask(old)
    mode = stat.S_IMODE((tmp_path / "config.json").stat().st_mode)
    assert mode == 0o644
    assert (tmp_path / "config.json").read_text() == "{}\n"
    assert [p.name for p in tmp_path.iterdir()] == ["config.json"]  # no temp file left behind
