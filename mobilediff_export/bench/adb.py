"""A thin driver for ``adb``: one device by serial, errors turned into ones a user can act on.

Everything phone mode does goes through ``Adb`` (``adb -s SERIAL ...``), so a scripted
stand-in first on ``PATH`` (``tests/fake_adb/adb``) can play the device in tests. The
failures that matter on a bench, a phone that disconnects, a full disk, a missing app or
binary, each become their own exception with a one-line message; the phone runner keeps
the results it already has and marks the run incomplete.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import MobileDiffError


class AdbError(MobileDiffError):
    """adb failed in a way not covered by a more specific error below."""


class AdbNotFound(AdbError):
    """No ``adb`` executable."""


class DeviceDisconnected(AdbError):
    """The device is gone (unplugged, offline, rebooted) or was never there."""


class DeviceFull(AdbError):
    """The device has no room for what we push."""


class MissingOnDevice(AdbError):
    """The benchmark app is not installed, or the benchmark binary is not there."""


_GONE = re.compile(
    r"device '[^']*' not found|no devices/emulators found|device offline|device not found|"
    r"device unauthorized|error: closed|protocol fault|connection reset|device still connecting",
    re.IGNORECASE,
)
_FULL = re.compile(r"No space left on device|ENOSPC|not enough space", re.IGNORECASE)


@dataclass
class DeviceEntry:
    """One line of ``adb devices -l``."""

    serial: str
    state: str
    """device | offline | unauthorized | ..."""
    details: dict[str, str] = field(default_factory=dict)
    """model, product, device, transport_id, usb as adb prints them."""


def find_adb(adb: str | None = None) -> str:
    """The adb to run: ``adb`` argument, then ``$ADB``, then the first on PATH."""
    chosen = adb or os.environ.get("ADB") or "adb"
    path = shutil.which(chosen)
    if path is None:
        raise AdbNotFound(
            f"adb not found ({chosen!r}): install Android platform-tools (Debian: apt-get "
            "install adb) or pass --adb PATH"
        )
    return path


def _run(argv: list[str], timeout: float | None) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            argv,
            capture_output=True,
            text=True,
            errors="replace",
            timeout=timeout,
            check=False,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired as exc:
        raise AdbError(f"{shlex.join(argv[1:])} timed out after {exc.timeout:.0f} s") from None
    except FileNotFoundError:
        raise AdbNotFound(f"adb not found at {argv[0]}") from None


def list_devices(adb: str | None = None) -> list[DeviceEntry]:
    """Parse ``adb devices -l`` (every state, not just ``device``)."""
    proc = _run([find_adb(adb), "devices", "-l"], timeout=30)
    if proc.returncode != 0:
        raise AdbError(f"adb devices failed: {_last_line(proc)}")
    entries = []
    for line in proc.stdout.splitlines():
        line = line.strip()
        if not line or line.startswith(("List of devices", "*")):
            continue
        parts = line.split()
        if len(parts) < 2:
            continue
        details = dict(p.split(":", 1) for p in parts[2:] if ":" in p)
        entries.append(DeviceEntry(parts[0], parts[1], details))
    return entries


def _last_line(proc: subprocess.CompletedProcess[str]) -> str:
    text = (proc.stderr.strip() or proc.stdout.strip()).splitlines()
    return text[-1].strip() if text else f"exit status {proc.returncode}"


class Adb:
    """``adb -s SERIAL``: shell, push, pull, with failures classified."""

    def __init__(self, serial: str, adb: str | None = None, timeout: float = 600.0) -> None:
        self.serial = serial
        self.exe = find_adb(adb)
        self.timeout = timeout

    def _call(
        self, args: list[str], timeout: float | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        proc = _run([self.exe, "-s", self.serial, *args], timeout or self.timeout)
        text = f"{proc.stdout}\n{proc.stderr}"
        if proc.returncode != 0 and _GONE.search(text):
            raise DeviceDisconnected(f"{self.serial} disconnected ({_last_line(proc)})")
        if _FULL.search(text) and (proc.returncode != 0 or args[0] == "push"):
            raise DeviceFull(f"{self.serial}: no space left on device ({_last_line(proc)})")
        if check and proc.returncode != 0:
            raise AdbError(f"{self.serial}: adb {args[0]} failed: {_last_line(proc)}")
        return proc

    def shell(self, command: str, timeout: float | None = None, check: bool = True) -> str:
        """Run ``command`` in the device shell; its stdout. Quote arguments with ``quote``."""
        return self._call(["shell", command], timeout, check).stdout

    def shell_status(self, command: str, timeout: float | None = None) -> tuple[int, str]:
        """Exit status and stdout+stderr of a device command that may fail harmlessly."""
        proc = self._call(["shell", command], timeout, check=False)
        return proc.returncode, proc.stdout + proc.stderr

    def getprop(self, name: str) -> str:
        return self.shell(f"getprop {quote(name)}").strip()

    def push(self, local: str | Path, remote: str, timeout: float | None = None) -> None:
        self._call(["push", str(local), remote], timeout)

    def pull(self, remote: str, local: str | Path, timeout: float | None = None) -> None:
        self._call(["pull", remote, str(local)], timeout)


def quote(arg: str) -> str:
    """Quote one argument for the device's ``sh`` (adb joins shell arguments with spaces)."""
    return shlex.quote(arg)
