"""The output directory's lease: one run at a time writes to an output directory.

A run takes `OUT/.lease.json` before it touches anything and holds it to the end; a thread refreshes its
heartbeat. A second run on the same directory refuses with one line naming the holder. A lease is taken
over, with a warning, when its holder is provably gone: same host and the process no longer exists, or no
heartbeat for `timeout_s`. `break_lease=True` (`--break-lease`) takes it over regardless, for a holder the
operator knows is dead (a lost node) before its heartbeat expires.

Atomicity: the lease is written to a temporary file and published with `os.link`, which fails if a lease
exists; link is atomic on local filesystems and on NFS (v3 included, where O_EXCL is not reliable; see
open(2)). A takeover first renames the stale lease aside, so that of two runs taking over at once only one
gets it. Heartbeats compare wall clocks of different hosts: keep `timeout_s` far above their clock skew.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time
from pathlib import Path

from workers.publish import publish_atomically, temp_path

log = logging.getLogger("pairforge")

LEASE_NAME = ".lease.json"


class OutputBusy(RuntimeError):
    """Another run holds the output directory's lease."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


def _ago(t: float) -> str:
    return f"{max(0.0, time.time() - t):.0f}s ago"


def _when(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


class OutputLease:
    """`with OutputLease(out, run_id, timeout_s=...):` holds the lease of `out` for the block's duration."""

    def __init__(self, out: str | os.PathLike, run_id: str, *, timeout_s: float, break_lease: bool = False):
        self.path = Path(out) / LEASE_NAME
        self.timeout_s, self.break_lease = timeout_s, break_lease
        self.record = {"run_id": run_id, "host": socket.gethostname(), "pid": os.getpid(),
                       "started_at": time.time(), "heartbeat_at": time.time(), "timeout_s": timeout_s}
        self.lost: str | None = None  # why the lease was lost while held, if it was
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _read(self, path: Path | None = None) -> dict | None:
        try:
            return json.loads((path or self.path).read_text())
        except FileNotFoundError:
            return None
        except (json.JSONDecodeError, UnicodeDecodeError):  # not ours to judge: shown as is
            return {"run_id": "?", "host": "?", "pid": -1, "started_at": 0.0, "heartbeat_at": 0.0, "unreadable": True}

    def _write(self, replace: bool) -> bool:
        data = json.dumps(self.record).encode()
        return publish_atomically(self.path, "lease", lambda tmp: tmp.write_bytes(data), replace=replace)

    def _describe(self, holder: dict) -> str:
        return (f"run {holder['run_id']} (host {holder['host']}, pid {holder['pid']}, since {_when(holder['started_at'])}, "
                f"last heartbeat {_ago(holder['heartbeat_at'])})")

    def _stale(self, holder: dict) -> str | None:
        """Why `holder` is provably gone, or None."""
        if holder.get("unreadable"):
            return None
        if holder["host"] == self.record["host"] and not _alive(holder["pid"]):
            return f"its process {holder['pid']} no longer exists on this host"
        silent = time.time() - holder["heartbeat_at"]
        if silent > holder.get("timeout_s", self.timeout_s):
            return f"no heartbeat for {silent:.0f}s"
        return None

    def _take_over(self, holder: dict) -> None:
        """Move the stale lease aside; if another run replaced it in the meantime, give that one back."""
        aside = temp_path(self.path, "lease-stale")
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return
        moved = self._read(aside) or {}
        if moved.get("run_id") != holder.get("run_id"):
            with contextlib.suppress(FileExistsError):
                os.link(aside, self.path)
        aside.unlink(missing_ok=True)

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(5):
            if self._write(replace=False):
                break
            holder = self._read()
            if holder is None:
                continue
            why = "--break-lease" if self.break_lease else self._stale(holder)
            if why is None:
                raise OutputBusy(
                    f"{self.path.parent}: in use by {self._describe(holder)}. Wait for it to finish; if that run is "
                    f"dead, re-run with --break-lease (or wait: the lease expires {holder.get('timeout_s', self.timeout_s):.0f}s "
                    f"after its last heartbeat; on the same host it is taken over as soon as its process is gone).")
            log.warning("%s: taking over the lease of %s: %s", self.path.parent, self._describe(holder), why)
            self._take_over(holder)
        else:
            raise OutputBusy(f"{self.path}: could not take the lease (it changed hands 5 times); try again")
        self._thread = threading.Thread(target=self._heartbeat, name="pairforge-lease", daemon=True)
        self._thread.start()

    def _heartbeat(self) -> None:
        interval = max(0.5, self.timeout_s / 10)
        while not self._stop.wait(interval):
            current = self._read()
            if current is None or current["run_id"] != self.record["run_id"]:
                self.lost = f"taken over by {self._describe(current)}" if current else "the lease file was removed"
                log.error("%s: this run lost its lease: %s", self.path.parent, self.lost)
                return
            self.record["heartbeat_at"] = time.time()
            try:
                self._write(replace=True)
            except OSError as e:  # a flaky shared filesystem: try again at the next beat
                log.warning("%s: heartbeat failed: %s", self.path, e)

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        current = self._read()
        if current is not None and current["run_id"] == self.record["run_id"]:
            self.path.unlink(missing_ok=True)

    def __enter__(self) -> OutputLease:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
