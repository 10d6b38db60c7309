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
