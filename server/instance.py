"""One server per port and per metrics directory, checked at start with locks the kernel holds.

SO_REUSEPORT, which lets the workers of one server share its port (supervisor.py), lets a second
server bind the same port just as silently: the two would split new connections, and with one
PROMETHEUS_MULTIPROC_DIR the second would wipe the first's metric files. So a server claims:

- its **port**, as an abstract Unix socket named after it (Linux): the name is unique within the
  network namespace (the scope of a TCP port) and the kernel releases it when the holder dies,
  even by SIGKILL: no stale lock file, no probe that races. The holder listens on it, so a second
  server can ask the kernel who holds it (SO_PEERCRED) and say so. `--hot-restart` starts beside
  the holder and takes the claim once that one has exited;
- its **metrics directory**, with flock: every process of the server holds a shared lock on
  `.lock` in it, and a new server needs the exclusive one before emptying the directory of a
  previous run's files. The supervisor's own temporary directory is removed by whichever of its
  processes exits last: the supervisor, or the last worker when a SIGKILL took the supervisor.
"""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
import socket
import struct
import tempfile
import threading
from pathlib import Path

LOCK_NAME = ".lock"
TEMP_PREFIX = "elf-metrics-"


class InstanceError(Exception):
    """This server cannot start beside what is there (one line for the operator)."""


def _port_name(port: int) -> bytes:
    return b"\0elf-reslt-server:port:%d" % port


def port_holder(port: int) -> int | None:
    """The pid of the server holding `port`'s claim, or None when none does."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(_port_name(port))
        pid, _, _ = struct.unpack("3i", probe.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
        return pid
    except OSError:
        return None
    finally:
        probe.close()


def claim_port(port: int) -> socket.socket:
    """Claim `port` for this server (held while the returned socket is open), or InstanceError."""
    claim = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        claim.bind(_port_name(port))
    except OSError as exc:
        claim.close()
        if exc.errno != errno.EADDRINUSE:
            raise
        holder = port_holder(port)
        raise InstanceError(
            f"port {port} is already served by another `python -m server`"
            f"{f' (pid {holder})' if holder else ''}; stop it first, or pass --hot-restart to "
            f"start beside it while it drains"
        ) from None
    claim.listen(8)
    return claim


class PortClaim:
    """The port's claim, taken at start, or with `hot_restart` as soon as the server beside has gone."""

    def __init__(self, port: int, hot_restart: bool):
        self.port, self.socket = port, None
        try:
            self.socket = claim_port(port)
        except InstanceError:
            if not hot_restart:
                raise
            self._stop = threading.Event()
            threading.Thread(target=self._claim_when_free, name="port-claim", daemon=True).start()

    def _claim_when_free(self) -> None:
        while not self._stop.wait(0.5):
            try:
                self.socket = claim_port(self.port)
                return
            except InstanceError:
                continue

    def release(self) -> None:
        if self.socket is None and hasattr(self, "_stop"):
            self._stop.set()
        if self.socket is not None:
            self.socket.close()


class MetricsDirectory:
    """The folder of the workers' metric files (prometheus_client's multiprocess mode), locked."""

    def __init__(self, folder: str | None):
        self.owned = folder is None  # a temporary folder of this server's own
        try:
            self.path = Path(tempfile.mkdtemp(prefix=TEMP_PREFIX) if self.owned else folder)
            self.path.mkdir(parents=True, exist_ok=True)
            self.lock_fd = os.open(self.path / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise InstanceError(f"metrics directory {folder or tempfile.gettempdir()}: {exc.strerror or exc}") from None
        try:
            fcntl.flock(self.lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self.lock_fd)
            raise InstanceError(
                f"metrics directory {self.path} is in use by another server "
                f"(PROMETHEUS_MULTIPROC_DIR): give each server its own"
            ) from None
        try:
            for stale in self.path.glob("*.db"):
                stale.unlink()
            probe = self.path / ".writable"
            probe.write_bytes(b"")  # the workers create their files here: fail now, not after "listening"
            probe.unlink()
        except OSError as exc:
            os.close(self.lock_fd)
            raise InstanceError(f"metrics directory {self.path}: {exc.strerror or exc}") from None
        fcntl.flock(self.lock_fd, fcntl.LOCK_SH)  # the workers share it from now on

    def close(self) -> None:
        """The supervisor's exit: its temporary folder goes (its workers have exited)."""
        os.close(self.lock_fd)
        if self.owned:
            shutil.rmtree(self.path, ignore_errors=True)


def hold_metrics_directory(path: str) -> int:
    """A worker's shared lock on the server's metrics directory (held until the process exits)."""
    fd = os.open(Path(path) / LOCK_NAME, os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_SH)
    return fd


def remove_if_last(path: str, fd: int) -> bool:
    """A worker outliving its supervisor: remove the server's temporary metrics folder if no other
    process of the server holds it any more. The lock is given up either way (the process ends)."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    shutil.rmtree(path, ignore_errors=True)
    return True
