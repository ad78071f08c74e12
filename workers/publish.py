"""Atomic publication of files and directories: one helper for the output store, the latent cache and
the tiny-model kit.

A writer builds its result under a temporary dot-name beside the target, `.tmp-<owner>-<random>-<name>`
(readers skip dot-names; the owner tag lets each writer clean up only its own leftovers), fsyncs it, and
publishes it in one step:
- a file with `os.link(tmp, final)`, which fails if `final` exists, so a published file is never
  overwritten and a second attempt at the same name learns that the first one got there (`os.replace`
  where replacing is the point, as for a manifest);
- a directory with `os.rename(tmp, final)`, which fails if a non-empty `final` exists.
On any failure the temporary is removed. link and rename are atomic on local filesystems and on NFS
(the server performs them); a filesystem without hard links gets an exists-check before the rename.
"""

from __future__ import annotations

import errno
import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path

TMP_PREFIX = ".tmp-"
_NO_HARD_LINKS = {errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS, errno.EMLINK}


def temp_path(final: Path, owner: str) -> Path:
    """A fresh temporary name beside `final`, tagged with its owner."""
    return final.with_name(f"{TMP_PREFIX}{owner}-{uuid.uuid4().hex[:12]}-{final.name}")


def owned_temps(directory: Path, owner: str) -> list[Path]:
    """The temporaries `owner` left in `directory` (not recursive)."""
    prefix = f"{TMP_PREFIX}{owner}-"
    with os.scandir(directory) as entries:
        return [Path(e.path) for e in entries if e.name.startswith(prefix)]


def remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _fsync(path: Path) -> None:
    if path.is_dir():
        for child in path.rglob("*"):
            if child.is_file():
                _fsync(child)
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _publish(tmp: Path, final: Path, replace: bool) -> bool:
    if replace:
        os.replace(tmp, final)
        return True
    if tmp.is_dir():
        try:
            os.rename(tmp, final)
        except OSError as e:
            if e.errno in (errno.EEXIST, errno.ENOTEMPTY):
                return False
            raise
        return True
    try:
        os.link(tmp, final)
    except FileExistsError:
        return False
    except OSError as e:
        if e.errno not in _NO_HARD_LINKS:
            raise
        if final.exists():
            return False
        os.rename(tmp, final)
    return True


def publish_atomically(final: str | os.PathLike, owner: str, write: Callable[[Path], object], *,
                       replace: bool = False) -> bool:
    """Run `write(tmp)` (it creates a file or a directory at `tmp`), then publish `tmp` as `final`.
    Returns False, and discards the result, when `final` already exists and `replace` is false."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(final, owner)
    try:
        write(tmp)
        _fsync(tmp)
        published = _publish(tmp, final, replace)
        _fsync(final.parent)  # the new directory entry survives a crash of the machine, not only of the process
        return published
    finally:
        remove(tmp)
