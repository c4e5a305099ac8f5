"""Writing files so that a reader never sees half of one, and a killed writer leaves no litter.

Run folders (:mod:`freezelab.run.record`) and reports (:mod:`freezelab.report.render`) are read
while they are being written: a resume trusts a checkpoint, the runner trusts ``summary.json``,
a person opens the report. Every file is therefore written to a temporary name in the same
folder (``.NAME.PID-RANDOM.tmp``) and renamed into place, which is atomic on POSIX and Windows.

Two more things make the folders safe to share and to kill:

* **Permissions follow the umask**, as for any file a program creates: the temporary file is
  opened with mode ``0o666`` and the kernel applies the umask (``tempfile.mkstemp`` would
  make it ``0o600``, so a shared results folder would be unreadable to the team).
* **Temporaries of killed writers are removed** the next time anything is written into the
  folder: the writer's process id is part of the name, and a temporary whose writer no longer
  runs is litter (one ``scandir`` per write; a folder holds a few dozen files). A temporary of
  a live process (another run writing into the same report folder, say) is left alone.

:func:`kill_point` is test support: ``FREEZELAB_TEST_KILL_AT`` makes a process SIGKILL itself
at a named write, so tests can interrupt a run at exact places (``tests/test_kill_resume.py``).
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
import re
import secrets
import signal
from pathlib import Path

__all__ = ["seal", "unseal", "atomic_write", "remove_stale_temporaries", "kill_point", "KILL_AT"]

#: ``GLOB:N[:during|after]``: SIGKILL this process at its N-th write of a file whose name matches
#: GLOB, half-way through writing the temporary file (``during``, the default) or right after it
#: is renamed into place (``after``). Test support only; read at every write, so a test can set it
#: in a child process.
KILL_AT = "FREEZELAB_TEST_KILL_AT"

# ``.NAME.PID-HEX.tmp`` (ours) or ``.NAME.XXXXXXXX.tmp`` (tempfile.mkstemp's, written by earlier versions).
_TEMPORARY = re.compile(r"^\..+\.(?:(?P<pid>[0-9]+)-[0-9a-f]+|[a-z0-9_]{8})\.tmp$")
_writes_seen: dict[str, int] = {}


def atomic_write(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so readers see either the old file or the whole new one.

    The file gets the permissions any new file gets (``0o666`` less the umask), and
    temporaries left in the folder by killed writers are removed first.

    >>> import tempfile; folder = Path(tempfile.mkdtemp())
    >>> atomic_write(folder / "a.json", b"{}"); (folder / "a.json").read_bytes()
    b'{}'
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path.parent)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            if os.environ.get(KILL_AT):
                f.write(data[: len(data) // 2])
                f.flush()
                kill_point(path, "during")
                f.write(data[len(data) // 2 :])
            else:
                f.write(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    kill_point(path, "after")


def remove_stale_temporaries(folder: str | Path) -> list[Path]:
    """Delete the temporaries of :func:`atomic_write` calls whose process has died; the paths deleted.

    A temporary without a process id in its name (an earlier version's) counts as stale.
    """
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        match = _TEMPORARY.match(entry.name)
        if match is None or not entry.is_file(follow_symlinks=False):
            continue
        pid = match["pid"]
        if pid is not None and _alive(int(pid)):
            continue
        try:
            os.unlink(entry.path)
            removed.append(Path(entry.path))
        except OSError:  # gone already, or not ours to delete: the write goes on regardless
            pass
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid() or os.name != "posix":
        return True  # another thread of this process may be writing it; elsewhere os.kill(pid, 0) would kill
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # it exists (another user's), or we cannot tell: keep the file
    return True


def kill_point(path: Path, moment: str) -> None:
    """Test support: SIGKILL this process if ``$FREEZELAB_TEST_KILL_AT`` names this write (see :data:`KILL_AT`)."""
    spec = os.environ.get(KILL_AT)
    if not spec:
        return
    pattern, _, rest = spec.partition(":")
    count, _, when = rest.partition(":")
    if when not in ("", "during", "after"):
        raise ValueError(f"{KILL_AT}={spec!r}: the moment is during or after, e.g. checkpoint.pt:2:after")
    if not fnmatch.fnmatch(path.name, pattern) or (when or "during") != moment:
        return
    _writes_seen[spec] = seen = _writes_seen.get(spec, 0) + 1
    if seen == int(count):
        os.kill(os.getpid(), getattr(signal, "SIGKILL", signal.SIGTERM))


#: The first line of a checked file (a freezelab checkpoint); the SHA-256 of the payload follows.
SEAL = b"freezelab-checkpoint 1\n"


def seal(payload: bytes) -> bytes:
    """``payload`` behind a header and its SHA-256, so that a garbled or truncated copy is detected on read."""
    return SEAL + hashlib.sha256(payload).hexdigest().encode() + b"\n" + payload


def unseal(data: bytes) -> bytes:
    """The payload of :func:`seal`'s bytes; ``ValueError`` saying what is wrong with them otherwise.

    Checkpoints are read by the run (resume) and by the model loader (a pretrained base), so
    both check them here, before ``torch.load`` sees a byte.
    """
    if not data:
        raise ValueError("is empty")
    head = len(SEAL) + 65
    if not data.startswith(SEAL) or len(data) < head or data[head - 1 : head] != b"\n":
        raise ValueError("is not a freezelab checkpoint (no header; truncated, garbled or older format)")
    payload = data[head:]
    if hashlib.sha256(payload).hexdigest().encode() != data[len(SEAL) : head - 1]:
        raise ValueError(f"fails its SHA-256 check (truncated or garbled, {len(data)} bytes)")
    return payload
