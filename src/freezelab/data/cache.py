"""The on-disk cache of decoded datasets: where it lives, file hashes, atomic verified ``.npz`` files.

Decoding 60,000 JPEGs takes seconds; loading their uint8 arrays from an ``.npz`` takes a fraction
of one. A cache file is named by the SHA-256 of the archive it came from, so a changed archive
can never be served stale pixels, and it stores a digest of its own arrays, so a file damaged
on disk is noticed, deleted and rebuilt instead of training on garbage.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

import numpy as np

__all__ = ["cache_root", "cached_arrays", "file_sha256"]

log = logging.getLogger("freezelab.data")

_CHUNK = 1 << 20
_DIGEST_KEY = "sha256_of_arrays"


def cache_root() -> Path:
    """Where freezelab caches derived files: ``$FREEZELAB_CACHE``, else ``$XDG_CACHE_HOME/freezelab``,
    else ``~/.cache/freezelab``. Nothing is created here.

    >>> cache_root()  # neither variable set
    PosixPath('/home/me/.cache/freezelab')
    """
    explicit = os.environ.get("FREEZELAB_CACHE")
    if explicit:
        return Path(explicit).expanduser().absolute()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser().absolute() / "freezelab"


@contextmanager
def _atomic_file(path: Path) -> Iterator[IO[bytes]]:
    """Write ``path`` through a temporary sibling renamed into place: readers see the old file or the
    whole new one, never half. The temporary file is removed if writing fails; ``open(.., "xb")``
    (not ``mkstemp``, which forces mode 0600) keeps the user's umask."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, "xb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def file_sha256(path: Path) -> str:
    """SHA-256 of a file, read in 1 MiB chunks; remembered per (path, size, mtime) in the cache's
    ``hashes.json``, so a 20 MB archive is hashed once, not on every run.

    >>> file_sha256(Path("CIFAR10-JPEG/cifar10-jpeg.tar.gz"))[:12]
    'a6893b7eaf3a'
    """
    path = path.absolute()
    st = path.stat()
    stamp = {"size": st.st_size, "mtime_ns": st.st_mtime_ns}
    index = cache_root() / "hashes.json"
    try:
        known = json.loads(index.read_text())
        if not isinstance(known, dict):
            known = {}
    except (OSError, ValueError):  # absent or damaged: it is only a cache of hashes, start afresh
        known = {}
    entry = known.get(str(path))
    if isinstance(entry, dict) and {k: entry.get(k) for k in stamp} == stamp and isinstance(entry.get("sha256"), str):
        return entry["sha256"]
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    known[str(path)] = {**stamp, "sha256": digest.hexdigest()}
    try:
        with _atomic_file(index) as f:
            f.write(json.dumps(known, indent=1, sort_keys=True).encode())
    except OSError as e:  # a read-only cache still works, it just hashes again next time
        log.warning("could not record the hash of %s in %s (%s); it will be hashed again next run", path, index, e)
    return known[str(path)]["sha256"]


def _arrays_digest(arrays: dict[str, np.ndarray]) -> str:
    digest = hashlib.sha256()
    for key in sorted(arrays):
        a = np.ascontiguousarray(arrays[key])
        digest.update(f"{key}:{a.dtype.str}:{a.shape}".encode())
        digest.update(a.data)
    return digest.hexdigest()


def _load_verified(path: Path) -> dict[str, np.ndarray]:
    """The arrays of a cache file; raises ValueError if it cannot be read or its digest differs."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (OSError, EOFError, ValueError, KeyError, zipfile.BadZipFile) as e:
        raise ValueError(f"unreadable ({type(e).__name__}: {e})") from e
    stored = arrays.pop(_DIGEST_KEY, None)
    if stored is None or str(stored) != _arrays_digest(arrays):
        raise ValueError("its checksum does not match its contents")
    return arrays


def cached_arrays(path: Path, build: Callable[[], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """The arrays stored at ``path``, or ``build()``'s, which are then saved there atomically.

    A cache file that fails to load or to match its checksum is deleted and rebuilt, with a
    warning on the ``freezelab.data`` logger (shown on stderr even when logging is not set up).
    A cache that cannot be written is not an error: the arrays are returned all the same.
    """
    with _build_lock(path):
        if path.is_file():
            try:
                return _load_verified(path)
            except ValueError as e:
                log.warning("cache file %s is corrupt (%s): deleting it and decoding again", path, e)
                path.unlink(missing_ok=True)
        arrays = build()
        try:
            with _atomic_file(path) as f:
                np.savez(f, **arrays, **{_DIGEST_KEY: np.array(_arrays_digest(arrays))})
        except OSError as e:
            log.warning("could not write the cache file %s (%s); the data will be decoded again next run", path, e)
        return arrays


@contextmanager
def _build_lock(path: Path) -> Iterator[None]:
    """Hold ``.<name>.lock`` beside ``path`` exclusively, so workers of one sweep (``--jobs 4``) that all find no cache
    decode once: the first builds, the others wait and then load its file. Without ``fcntl``
    (Windows) or a writable folder, there is no lock, and at worst each worker decodes."""
    try:
        import fcntl

        path.parent.mkdir(parents=True, exist_ok=True)
        lock = open(path.with_name(f".{path.name}.lock"), "a")  # noqa: SIM115 (closed below)
    except (ImportError, OSError):
        yield
        return
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield
