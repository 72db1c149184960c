"""The host ledger's file: who takes part, what each asked and was granted.

One small file in shared memory, mapped by every participant, no daemon.
Writers take an exclusive ``flock`` (and a lock for this process's threads:
``flock`` belongs to the open file, which all threads share); readers of the
generation counter take nothing, it only tells them to read again.

Layout (little-endian): a 64-byte header (magic, version, slot count, slot
size, generation), then ``SLOTS`` slots of ``SLOT_SIZE`` bytes, one per
participant: pid, flags, start time, join time, asked, its own capacity,
the host's CPUs as it sees them, its cgroup, the grant and, when pinned,
its CPUs as a bitmap. A file that is not this layout (corrupt, truncated,
another program's) is rebuilt, with a warning.

Liveness is a pid *and* its start time: a participant killed with SIGKILL
leaves its slot behind, and its pid may be reused by an unrelated process;
a slot whose pid is gone or started at another time is dropped.
"""

from __future__ import annotations

import errno
import mmap
import os
import stat
import struct
import sys
import tempfile
import threading
import warnings
import zlib
from typing import NamedTuple

ENV_VAR = "THREADGUARD_LEDGER"
MAGIC = b"TGHOST\x00\x01"
VERSION = 1
SLOTS = 256
SLOT_SIZE = 256
MAX_PINNED_CPU = 1024  # CPUs a pinned slot can name (its bitmap)
HEADER = struct.Struct("<8sIIIIQ")  # magic, version, slots, slot size, high, generation
HEADER_SIZE = 64
HIGH_AT = 20  # one past the highest slot ever used: readers look no further
GENERATION_AT = 24
FIELDS = struct.Struct("<iIddiiiiQ")  # pid, flags, start, joined, asked, capacity, host, grant, cgroup
BITMAP_AT = FIELDS.size
BITMAP_SIZE = MAX_PINNED_CPU // 8
SIZE = HEADER_SIZE + SLOTS * SLOT_SIZE

USED, PINNED = 1, 2
LOCK_WAIT = 2.0  # seconds a writer waits for the file's lock before giving up


class LedgerError(OSError):
    """The ledger cannot be used here (no such directory, not ours, no locks)."""


class Slot(NamedTuple):
    """One participant, as the file holds it."""

    index: int
    pid: int
    pinned: bool
    start: float  # the process's start time (liveness with the pid)
    joined: float  # wall-clock time it joined
    asked: int
    capacity: int  # its own effective CPUs
    host_cpus: int  # the host's CPUs, as it sees them
    grant: int
    cgroup: int  # which cgroup (and cpuset) it runs in
    cpus: tuple[int, ...]  # when pinned: its CPUs


def default_path() -> str:
    """Per user, in shared memory where there is some."""
    base = "/dev/shm" if os.path.isdir("/dev/shm") else tempfile.gettempdir()
    return os.path.join(base, f"threadguard-{os.getuid()}", "host.ledger")


def ledger_path() -> str:
    return os.environ.get(ENV_VAR) or default_path()


def process_start(pid: int) -> float | None:
    """When ``pid`` started (clock ticks since boot on Linux), None when it
    does not exist. Compared exactly: two reads for one process agree."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
        return float(data[data.rindex(b")") + 2:].split()[19])
    except FileNotFoundError:
        return None
    except (OSError, ValueError, IndexError):
        pass
    try:
        import psutil
        return psutil.Process(pid).create_time()
    except Exception:  # psutil.NoSuchProcess, AccessDenied: treated as gone only when gone
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except OSError:
            pass
        return -1.0  # alive, start unknown: never matches a recorded start


def cgroup_key(path: str | None, allowed: tuple[int, ...]) -> int:
    return zlib.crc32(f"{path}|{allowed}".encode())


def _bitmap(cpus) -> bytes:
    bits = bytearray(BITMAP_SIZE)
    for c in cpus:
        if 0 <= c < MAX_PINNED_CPU:
            bits[c >> 3] |= 1 << (c & 7)
    return bytes(bits)


def _cpus(bits: bytes) -> tuple[int, ...]:
    return tuple(i * 8 + b for i, byte in enumerate(bits) if byte for b in range(8)
                 if byte >> b & 1)


class LedgerFile:
    """The mapped file. Every method that writes takes the lock itself."""

    def __init__(self, path: str | None = None):
        if sys.platform == "win32":
            raise LedgerError("the host ledger needs POSIX file locks")
        self.path = path or ledger_path()
        self.lock = threading.RLock()
        self.fd = self._open()
        try:
            self.map = mmap.mmap(self.fd, SIZE)
        except (OSError, ValueError) as err:
            os.close(self.fd)
            raise LedgerError(f"{self.path}: cannot map: {err}") from None

    def _open(self) -> int:
        explicit = bool(os.environ.get(ENV_VAR))
        directory = os.path.dirname(self.path) or "."
        if not explicit:
            _own_directory(directory)
        mode = 0o666 if explicit else 0o600  # a path given to share wider: the umask decides
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
                         | os.O_NONBLOCK, mode)
        except OSError as err:
            why = "a symbolic link (refused)" if err.errno == errno.ELOOP else err.strerror
            raise LedgerError(f"{self.path}: {why}") from None
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise LedgerError(f"{self.path}: not a regular file")
            if not explicit and info.st_uid != os.getuid():
                raise LedgerError(f"{self.path}: owned by another user")
            import fcntl
            _flock(fd, self.path)
            try:
                if info.st_size != SIZE or not self._valid(fd):
                    if info.st_size:
                        warnings.warn(f"threadguard: {self.path} is not a host ledger of this "
                                      "version (corrupt or another program's): rebuilt",
                                      RuntimeWarning, stacklevel=5)
                    os.ftruncate(fd, 0)
                    os.ftruncate(fd, SIZE)
                    os.pwrite(fd, HEADER.pack(MAGIC, VERSION, SLOTS, SLOT_SIZE, 0, 1), 0)
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        except LedgerError:
            os.close(fd)
            raise
        except OSError as err:
            os.close(fd)
            raise LedgerError(f"{self.path}: {err.strerror}") from None
        return fd

    @staticmethod
    def _valid(fd: int) -> bool:
        head = os.pread(fd, HEADER.size, 0)
        if len(head) != HEADER.size:
            return False
        return _header_ok(head)

    def close(self) -> None:
        try:
            self.map.close()
        finally:
            os.close(self.fd)

    # -- locking -------------------------------------------------------------
    def __enter__(self) -> "LedgerFile":
        self.lock.acquire()
        try:
            _flock(self.fd, self.path)
        except BaseException:
            self.lock.release()
            raise
        if self.map[:8] != MAGIC:  # overwritten under us: rebuilt
            warnings.warn(f"threadguard: {self.path} was overwritten: rebuilt", RuntimeWarning,
                          stacklevel=3)
            self.map[:] = bytes(SIZE)
            self.map[:HEADER.size] = HEADER.pack(MAGIC, VERSION, SLOTS, SLOT_SIZE, 0, 1)
        return self

    def __exit__(self, *exc) -> None:
        import fcntl
        try:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
        finally:
            self.lock.release()

    # -- reading and writing ---------------------------------------------------
    def generation(self) -> int:
        return struct.unpack_from("<Q", self.map, GENERATION_AT)[0]

    def bump(self) -> None:
        struct.pack_into("<Q", self.map, GENERATION_AT, self.generation() + 1)

    def slots(self) -> list[Slot]:
        """The used slots, in the ledger's order (the lock held or not: a
        reader without it may see a write half done, and reads again at the
        next generation)."""
        out = []
        view = self.map
        high = min(SLOTS, struct.unpack_from("<I", view, HIGH_AT)[0])
        for i in range(high):
            at = HEADER_SIZE + i * SLOT_SIZE
            pid, flags, start, joined, asked, cap, host, grant, cg = FIELDS.unpack_from(view, at)
            if not flags & USED:
                continue
            cpus = _cpus(view[at + BITMAP_AT:at + BITMAP_AT + BITMAP_SIZE]) if flags & PINNED else ()
            out.append(Slot(i, pid, bool(flags & PINNED), start, joined, asked, cap, host, grant,
                            cg, cpus))
        return out

    def write(self, slot: Slot) -> None:
        at = HEADER_SIZE + slot.index * SLOT_SIZE
        flags = USED | (PINNED if slot.pinned else 0)
        FIELDS.pack_into(self.map, at, slot.pid, flags, slot.start, slot.joined, slot.asked,
                         slot.capacity, slot.host_cpus, slot.grant, slot.cgroup)
        self.map[at + BITMAP_AT:at + BITMAP_AT + BITMAP_SIZE] = _bitmap(slot.cpus)
        if struct.unpack_from("<I", self.map, HIGH_AT)[0] <= slot.index:
            struct.pack_into("<I", self.map, HIGH_AT, slot.index + 1)

    def clear(self, index: int) -> None:
        at = HEADER_SIZE + index * SLOT_SIZE
        self.map[at:at + SLOT_SIZE] = bytes(SLOT_SIZE)
        high = min(SLOTS, struct.unpack_from("<I", self.map, HIGH_AT)[0])
        if index + 1 >= high:  # the high mark comes down to the last slot in use
            while high and not struct.unpack_from(
                    "<I", self.map, HEADER_SIZE + (high - 1) * SLOT_SIZE + 4)[0] & USED:
                high -= 1
            struct.pack_into("<I", self.map, HIGH_AT, high)

    def free_index(self, used: set[int]) -> int:
        for i in range(SLOTS):
            if i not in used:
                return i
        raise LedgerError(f"{self.path}: all {SLOTS} participant slots taken")

    def reap(self) -> bool:
        """Drop the slots of processes that are gone (the lock is held)."""
        dropped = False
        slots = self.slots()
        for slot in slots:
            now = process_start(slot.pid)
            if now is None or (slot.start != -1.0 and now != slot.start):
                self.clear(slot.index)
                dropped = True
        return dropped


def _flock(fd: int, path: str) -> None:
    """The file's exclusive lock, waited for at most LOCK_WAIT seconds: a
    participant stopped (SIGSTOP, a debugger) while holding it must not hang
    every other one. Raises LedgerError when it cannot be had."""
    import fcntl
    import time
    deadline, delay = None, 0.0005
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            pass
        except OSError as err:  # no locks on this filesystem
            raise LedgerError(f"{path}: cannot lock: {err.strerror}") from None
        now = time.monotonic()
        if deadline is None:
            deadline = now + LOCK_WAIT
        elif now > deadline:
            raise LedgerError(f"{path}: locked by another process for over {LOCK_WAIT:g} s "
                              "(stopped?)")
        time.sleep(delay)
        delay = min(delay * 2, 0.05)


def _own_directory(directory: str) -> None:
    """The per-user directory: made 0700, and refused when it is a link or
    belongs to someone else (shared memory is writable by every user)."""
    try:
        os.mkdir(directory, 0o700)
    except FileExistsError:
        pass
    except OSError as err:
        raise LedgerError(f"{directory}: {err.strerror}") from None
    info = os.lstat(directory)
    if not stat.S_ISDIR(info.st_mode):
        raise LedgerError(f"{directory}: not a directory (a link?)")
    if info.st_uid != os.getuid():
        raise LedgerError(f"{directory}: owned by another user")


def read_slots(path: str | None = None) -> list[Slot]:
    """The used slots of the ledger at ``path``, read without creating,
    locking or repairing it (for ``threadguard host``). Raises LedgerError
    when the file is not a ledger."""
    path = path or ledger_path()
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        return []
    except OSError as err:
        raise LedgerError(f"{path}: {err.strerror}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise LedgerError(f"{path}: not a regular file")
        data = os.pread(fd, SIZE + 1, 0)
    finally:
        os.close(fd)
    if len(data) != SIZE or not _header_ok(data[:HEADER.size]):
        raise LedgerError(f"{path}: not a threadguard host ledger")
    view = _View(data)
    return view.slots()


class _View(LedgerFile):
    """Parsing over bytes already read."""

    def __init__(self, data: bytes):  # no file: nothing to open or lock
        self.map = data


def _header_ok(head: bytes) -> bool:
    magic, version, slots, size, high, _ = HEADER.unpack(head)
    return (magic, version, slots, size) == (MAGIC, VERSION, SLOTS, SLOT_SIZE) and high <= SLOTS
