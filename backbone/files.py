"""Writing a file whole or not at all: every checkpoint, report and output of the project goes through here.

A reader (a resumed run, the service, a user's script) sees the old file or the new one, never half
of one, even when the writer is killed: the bytes go to a temporary file in the same folder, are
flushed to disk, and the temporary file is renamed over the target.
"""

import os
import secrets
import stat
from collections.abc import Callable
from pathlib import Path


def write_atomically(path: str | os.PathLike, write: Callable[[Path], object]) -> Path:
    """Call `write(temporary_path)` to produce the file's content, then put it at `path` in one step.

    The temporary file sits beside `path` with the same suffix (so writers that pick a format from the
    name, such as PIL or PyAV, pick the right one) and is created with mode 0666 less the process umask
    (0644 under the usual 022): the file a user or the service reads later is as readable as any other
    they write, not 0600 as `tempfile` makes it. After `write` returns, the file and the folder's entry
    are fsynced, so a power cut after the rename cannot leave an empty file. If `write` raises,
    the temporary file is removed and `path` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary, mode = _create_beside(path)
    try:
        write(temporary)
        # Some writers replace the file they are given (safetensors makes a new 0600 one): restore the mode.
        os.chmod(temporary, mode)
        with open(temporary, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    _fsync_folder(path.parent)
    return path


def _create_beside(path: Path) -> tuple[Path, int]:
    """An empty new file next to `path` and its mode: os.open applies the umask to 0o666, as open() does
    for any new file (reading the umask itself would mean setting it, which races with other threads)."""
    while True:
        temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}.partial{path.suffix}")
        try:
            descriptor = os.open(temporary, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
        except FileExistsError:
            continue
        try:
            return temporary, stat.S_IMODE(os.fstat(descriptor).st_mode)
        finally:
            os.close(descriptor)


def _fsync_folder(folder: Path) -> None:
    """Make the rename itself durable (POSIX); Windows cannot open a folder, and needs no such step."""
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
