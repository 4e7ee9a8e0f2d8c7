"""Atomic writes: the file's mode honours the umask like a plain open() would (teammates can read results)."""
import os
import stat
import subprocess
import sys

from conftest import REPO


def test_atomic_write_honours_the_umask(tmp_path):
    # A fresh process: the module reads the umask once at import.
    code = ("import os, sys; os.umask(int(sys.argv[2], 8)); from wan_sft.fsutil import atomic_write; "
            "atomic_write(sys.argv[1], 'x')")
    for umask, mode in (("022", 0o644), ("077", 0o600), ("002", 0o664)):
        path = tmp_path / f"file-{umask}.txt"
        subprocess.run([sys.executable, "-c", code, str(path), umask], cwd=REPO, check=True)
        assert stat.S_IMODE(os.stat(path).st_mode) == mode, umask
        assert path.read_text() == "x"
