import os
import stat

import pytest

from codelm.atomic import atomic_write_text


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


def test_a_failed_write_leaves_the_old_file_and_no_temp(tmp_path):
    from codelm.atomic import atomic_path
    target = tmp_path / "summary.json"
    atomic_write_text(target, "old\n")

    class Boom(Exception):
        pass

    with pytest.raises(Boom):
        with atomic_path(target) as tmp:
            assert tmp.suffix == ".json" and tmp.parent == tmp_path  # writers that pick a format by suffix work
            tmp.write_text("half")
            raise Boom
    assert target.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]


def test_a_directory_is_replaced_whole_or_not_at_all(tmp_path):
    from codelm.atomic import atomic_directory
    dest = tmp_path / "ckpt"
    with atomic_directory(dest) as tmp:
        (tmp / "a.bin").write_bytes(b"1")
        os.chmod(tmp / "a.bin", 0o600)  # as safetensors leaves it
    assert stat.S_IMODE((dest / "a.bin").stat().st_mode) == default_mode()
    with pytest.raises(RuntimeError):
        with atomic_directory(dest) as tmp:
            (tmp / "b.bin").write_bytes(b"2")
            raise RuntimeError("interrupted")
    assert sorted(p.name for p in dest.iterdir()) == ["a.bin"]
    with atomic_directory(dest) as tmp:
        (tmp / "c.bin").write_bytes(b"3")
    assert sorted(p.name for p in dest.iterdir()) == ["c.bin"]
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]  # neither temp nor the old copy is left


def default_mode():
    from codelm.atomic import default_file_mode
    return default_file_mode()
