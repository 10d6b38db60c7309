"""Published files: atomic rename, ordinary permissions."""


import os

from cimcal.publish import publish_file


def test_profiles_checkpoints_and_tables_are_written_with_the_users_file_mode(tmp_path) -> None:
    """safetensors and mkstemp create 0600 files; what cimcal publishes is meant to be shared."""
    temporary = tmp_path / "x.tmp"
    temporary.write_bytes(b"1")
    os.chmod(temporary, 0o600)
    umask = os.umask(0o022)
    try:
        publish_file(temporary, tmp_path / "x")
    finally:
        os.umask(umask)
    assert not temporary.exists()
    assert (tmp_path / "x").stat().st_mode & 0o777 == 0o644


def test_publishing_never_changes_the_process_umask(tmp_path, monkeypatch) -> None:
    """Setting the umask to read it would, for that instant, give files other threads create another mode."""
    temporary = tmp_path / "y.tmp"
    temporary.write_bytes(b"1")
    umask = os.umask(0o027)
    try:
        def refuse(_mask: int) -> int:
            raise AssertionError("publish_file changed the umask")

        monkeypatch.setattr(os, "umask", refuse)
        publish_file(temporary, tmp_path / "y")
        monkeypatch.undo()
    finally:
        os.umask(umask)
    assert (tmp_path / "y").stat().st_mode & 0o777 == 0o640
