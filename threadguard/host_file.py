"""The host ledger's file: who takes part, what each asked and was granted.

One small file in shared memory, no daemon. Writers take an exclusive
``flock``; the threads of one process are kept apart by the caller
(``threadguard.host`` uses the file under its own lock only: ``flock``
belongs to the open file, which all threads share). Readers of the
generation counter take nothing, it only tells them to read again. The file is read and written
with ``pread``/``pwrite``, never mapped: a mapping of a file that another
process truncates, or of a full tmpfs, kills with SIGBUS.

Layout (little-endian): a 64-byte header (magic, version, slot count, slot
size, high mark, generation, the pid holding the lock), then ``SLOTS`` slots
of ``SLOT_SIZE`` bytes, one per participant: pid, flags, start time, join
time, asked, its own capacity, the host's CPUs as it sees them, the grant,
its cgroup, the CPUs it may use, and when pinned the CPUs it was given (two
bitmaps).

A file that is ours but damaged (empty, zeroed, truncated, another version
of this layout) is rebuilt with a warning; so is anything in the per-user
directory. A file given by ``THREADGUARD_LEDGER`` that is something else is
refused, never overwritten: a typo in the path must not destroy a file.

Liveness is a pid *and* its start time: a participant killed with SIGKILL
leaves its slot behind, and its pid may be reused by an unrelated process;
a slot whose pid is gone or started at another time is dropped.
"""

from __future__ import annotations

import errno
import math
import os
import stat
import struct
import sys
import tempfile
import time
import warnings
import zlib
from typing import NamedTuple

try:  # imported now, not at the first lock (a fork during the import would hang the child)
    import fcntl
except ImportError:  # not POSIX: the ledger is not used
    fcntl = None

ENV_VAR = "THREADGUARD_LEDGER"
MAGIC = b"TGHOST\x00\x02"
FAMILY = MAGIC[:6]  # any version of this layout: ours to rebuild
VERSION = 2
SLOTS = 256
SLOT_SIZE = 320
MAX_PINNED_CPU = 1024  # CPUs a pinned slot can name (its bitmap)
HEADER = struct.Struct("<8sIIIIQi")  # magic, version, slots, slot size, high, generation, owner
HEADER_SIZE = 64
HIGH_AT, GENERATION_AT, OWNER_AT = 20, 24, 32
FIELDS = struct.Struct("<iIddiiiiQ")  # pid, flags, start, joined, asked, capacity, host, grant, cgroup
BITMAP_AT = FIELDS.size  # the CPUs given (pinned)
BITMAP_SIZE = MAX_PINNED_CPU // 8
ALLOWED_AT = BITMAP_AT + BITMAP_SIZE  # the CPUs it may use
SIZE = HEADER_SIZE + SLOTS * SLOT_SIZE
MAX_ASK = 1 << 16  # an ask or a CPU count above this is not a real one: a damaged slot

USED, PINNED = 1, 2
LOCK_WAIT = 10.0  # seconds a writer waits for a lock whose holder is running


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
    allowed: tuple[int, ...] = ()  # the CPUs it may use (its affinity and cpuset)


def default_path() -> str:
    """Per user, in shared memory where there is some."""
    base = "/dev/shm" if os.path.isdir("/dev/shm") else tempfile.gettempdir()
    return os.path.join(base, f"threadguard-{os.getuid()}", "host.ledger")


def ledger_path() -> str:
    return os.environ.get(ENV_VAR) or default_path()


def _stat_fields(pid: int) -> list[bytes]:
    """The fields of ``/proc/PID/stat`` after the command name (which may
    hold spaces and parentheses): the state first. FileNotFoundError when
    the process is gone."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        data = f.read()
    return data[data.rindex(b")") + 2:].split()


def process_start(pid: int) -> float | None:
    """When ``pid`` started (clock ticks since boot on Linux), None when it
    does not exist. Compared exactly: two reads for one process agree."""
    try:
        return float(_stat_fields(pid)[19])
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


def _stopped(pid: int) -> bool:
    """Whether ``pid`` is stopped (SIGSTOP, a debugger) or gone: it will not
    release a lock soon."""
    try:
        return _stat_fields(pid)[0] in (b"T", b"t", b"Z", b"X")
    except FileNotFoundError:
        return True
    except (OSError, ValueError, IndexError):
        return False


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


def _header_ok(head: bytes) -> bool:
    if len(head) < HEADER.size:
        return False
    magic, version, slots, size, high, _, _ = HEADER.unpack_from(head)
    return (magic, version, slots, size) == (MAGIC, VERSION, SLOTS, SLOT_SIZE) and high <= SLOTS


def _fresh_header() -> bytes:
    return HEADER.pack(MAGIC, VERSION, SLOTS, SLOT_SIZE, 0, 1, 0)


def parse_slots(data: bytes) -> list[Slot]:
    """The used, sound slots in ``data`` (the header and the slots up to
    the high mark). A slot whose numbers no real participant has (damage)
    is left out."""
    high = min(SLOTS, struct.unpack_from("<I", data, HIGH_AT)[0])
    out = []
    for i in range(high):
        at = HEADER_SIZE + i * SLOT_SIZE
        if at + SLOT_SIZE > len(data):
            break
        pid, flags, start, joined, asked, cap, host, grant, cg = FIELDS.unpack_from(data, at)
        if not flags & USED:
            continue
        if not (0 < pid < 1 << 31 and 0 < asked <= MAX_ASK and 0 < cap <= MAX_ASK
                and 0 < host <= MAX_ASK and 0 <= grant <= MAX_ASK and math.isfinite(joined)
                and 0 <= joined < 1e11 and math.isfinite(start)):
            continue
        cpus = _cpus(data[at + BITMAP_AT:at + BITMAP_AT + BITMAP_SIZE]) if flags & PINNED else ()
        allowed = _cpus(data[at + ALLOWED_AT:at + ALLOWED_AT + BITMAP_SIZE])
        out.append(Slot(i, pid, bool(flags & PINNED), start, joined, asked, cap, host, grant,
                        cg, cpus, allowed))
    return out


class LedgerFile:
    """The open file. Every method that writes is called with the lock held
    (``with ledger:``)."""

    def __init__(self, path: str | None = None):
        if sys.platform == "win32" or fcntl is None:
            raise LedgerError("the host ledger needs POSIX file locks")
        self.path = os.path.abspath(path or ledger_path())  # a later chdir must not move it
        self.explicit = bool(os.environ.get(ENV_VAR))
        self.fd = self._open()
        self.identity = self._identity_of_fd()

    def _open(self) -> int:
        directory = os.path.dirname(self.path) or "."
        if not self.explicit:
            _own_directory(directory)
        mode = 0o666 if self.explicit else 0o600  # a path given to share wider: the umask decides
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
            if not self.explicit and info.st_uid != os.getuid():
                raise LedgerError(f"{self.path}: owned by another user")
            self.fd = fd
            with self:  # the lock; a damaged file is repaired under it
                pass
        except LedgerError:
            os.close(fd)
            raise
        except OSError as err:
            os.close(fd)
            raise LedgerError(f"{self.path}: {err.strerror}") from None
        return fd

    def _identity_of_fd(self) -> tuple[int, int]:
        info = os.fstat(self.fd)
        return info.st_dev, info.st_ino

    def same_file(self) -> bool:
        """Whether the path still names the file this process has open (a
        ledger deleted by a tmp cleaner, or replaced, splits the host)."""
        try:
            info = os.stat(self.path, follow_symlinks=False)
        except OSError:
            return False
        return (info.st_dev, info.st_ino) == self.identity

    def close(self) -> None:
        os.close(self.fd)

    # -- locking -------------------------------------------------------------
    # A locked use is one transaction: the header and the slots in use are
    # read once as the lock is taken, changed in memory, and written back in
    # one write as it is let go (not when the body raised: the next change,
    # or the watcher, settles what was meant).
    def __enter__(self) -> "LedgerFile":
        # Everything inside the try: an exception raised anywhere (a signal
        # handler's) unlocks, and unlocking a lock not held does nothing.
        try:
            _flock(self.fd, self.path)
            self._repair()  # first: a file refused is not written to at all
            os.pwrite(self.fd, struct.pack("<i", os.getpid()), OWNER_AT)
            self._load()
        except BaseException:
            _unlock(self.fd)
            raise
        return self

    def __exit__(self, *exc) -> None:
        try:
            image, self.image = self.image, None
            if exc[0] is None and self.dirty:
                struct.pack_into("<i", image, OWNER_AT, 0)
                os.pwrite(self.fd, image, 0)
            else:
                os.pwrite(self.fd, struct.pack("<i", 0), OWNER_AT)
        except OSError:
            pass
        finally:
            _unlock(self.fd)

    def unlock(self) -> None:
        """Let go of the lock if this process still holds it (an exit a signal
        cut short); harmless when it does not."""
        _unlock(self.fd)

    def _repair(self) -> None:
        """Rebuild a damaged file (the lock is held)."""
        head = os.pread(self.fd, HEADER_SIZE, 0)
        size = os.fstat(self.fd).st_size
        if size == SIZE and _header_ok(head):
            return
        if size and self.explicit and not (
                head.startswith(FAMILY)
                or (size <= SIZE and not os.pread(self.fd, SIZE, 0).strip(b"\0"))):
            raise LedgerError(f"{self.path}: not a threadguard host ledger (refused: "
                              "it is not overwritten)")
        os.ftruncate(self.fd, 0)
        _reserve(self.fd)
        os.pwrite(self.fd, _fresh_header(), 0)
        if size:  # said once it is done: under -W error the file is still repaired
            try:
                warnings.warn(f"threadguard: {self.path} was a damaged host ledger (truncated, "
                              "zeroed or another version): rebuilt", RuntimeWarning,
                              stacklevel=2)
            except Warning:
                pass

    def _load(self) -> None:
        data = os.pread(self.fd, HEADER_SIZE + 16 * SLOT_SIZE, 0)
        high = min(SLOTS, struct.unpack_from("<I", data, HIGH_AT)[0])
        if high > 16:
            data = os.pread(self.fd, HEADER_SIZE + high * SLOT_SIZE, 0)
        self.image = bytearray(data[:HEADER_SIZE + high * SLOT_SIZE])
        self.dirty = False

    image: bytearray | None = None
    dirty = False

    # -- reading and writing ---------------------------------------------------
    def generation(self) -> int:
        """The counter every change moves (read without the lock)."""
        data = os.pread(self.fd, 8, GENERATION_AT)
        return struct.unpack("<Q", data)[0] if len(data) == 8 else -1

    def bump(self) -> None:
        image = self.image
        value = struct.unpack_from("<Q", image, GENERATION_AT)[0]
        struct.pack_into("<Q", image, GENERATION_AT, (value + 1) % (1 << 63))
        self.dirty = True

    def slots(self) -> list[Slot]:
        """The used slots, in the ledger's order (the lock is held)."""
        return parse_slots(self.image)

    def _high(self) -> int:
        return min(SLOTS, struct.unpack_from("<I", self.image, HIGH_AT)[0])

    def write(self, slot: Slot) -> None:
        flags = USED | (PINNED if slot.pinned else 0)
        data = FIELDS.pack(slot.pid, flags, slot.start, slot.joined, slot.asked, slot.capacity,
                           slot.host_cpus, slot.grant, slot.cgroup) + _bitmap(slot.cpus) \
            + _bitmap(slot.allowed)
        at = HEADER_SIZE + slot.index * SLOT_SIZE
        image = self.image
        if len(image) < at + SLOT_SIZE:
            image.extend(bytes(at + SLOT_SIZE - len(image)))
        image[at:at + len(data)] = data
        if self._high() <= slot.index:
            struct.pack_into("<I", image, HIGH_AT, slot.index + 1)
        self.dirty = True

    def clear(self, index: int, used: set[int]) -> None:
        """Free slot ``index``; ``used``: the slots still in use after it."""
        at = HEADER_SIZE + index * SLOT_SIZE
        self.image[at:at + SLOT_SIZE] = bytes(SLOT_SIZE)
        high = self._high()
        if index + 1 >= high:  # the high mark comes down to the last slot in use
            while high and high - 1 not in used:
                high -= 1
            struct.pack_into("<I", self.image, HIGH_AT, high)
        self.dirty = True

    def free_index(self, used: set[int]) -> int:
        for i in range(SLOTS):
            if i not in used:
                return i
        raise LedgerError(f"{self.path}: all {SLOTS} participant slots taken")

    def reap(self, slots: list[Slot]) -> list[Slot]:
        """``slots`` (as ``slots()`` read them) without the processes that are
        gone, whose slots are freed, and damaged slots freed too (the lock is
        held)."""
        live = [s for s in slots if _alive(s)]
        used = {s.index for s in live}
        for slot in slots:
            if slot.index not in used:
                self.clear(slot.index, used)
        sound = {s.index for s in slots}
        for i in range(self._high()):  # used, but not sound: damage
            at = HEADER_SIZE + i * SLOT_SIZE + 4
            if i not in sound and struct.unpack_from("<I", self.image, at)[0] & USED:
                self.clear(i, used)
        return live


def _alive(slot: Slot) -> bool:
    """Its pid exists and started when the slot says (not a reused pid)."""
    now = process_start(slot.pid)
    return now is not None and (slot.start == -1.0 or now == slot.start)


def _reserve(fd: int) -> None:
    """The whole file's blocks, now: a write into a hole of a full tmpfs fails
    later, mid-update (ENOSPC), where this fails before anything is written."""
    try:
        os.posix_fallocate(fd, 0, SIZE)
    except AttributeError:  # not offered here
        os.ftruncate(fd, SIZE)
    except OSError as err:
        if err.errno in (errno.EOPNOTSUPP, errno.EINVAL, getattr(errno, "ENOTSUP", -1)):
            os.ftruncate(fd, SIZE)
        else:
            raise


def _unlock(fd: int) -> None:
    try:
        fcntl.flock(fd, fcntl.LOCK_UN)
    except OSError:  # closed under us: nothing held
        pass


def _flock(fd: int, path: str) -> None:
    """The file's exclusive lock. Waited for while its holder (whose pid the
    header names) runs, at most LOCK_WAIT seconds; given up at once when the
    holder is stopped (SIGSTOP, a debugger), so no participant hangs on
    another. Raises LedgerError when it cannot be had."""
    deadline, delay = None, 0.00005
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
        else:
            owner = os.pread(fd, 4, OWNER_AT)
            holder = struct.unpack("<i", owner)[0] if len(owner) == 4 else 0
            if holder > 0 and holder != os.getpid() and _stopped(holder) and delay >= 0.001:
                raise LedgerError(f"{path}: locked by process {holder}, which is stopped")
            if now > deadline:
                raise LedgerError(f"{path}: locked by another process for over "
                                  f"{LOCK_WAIT:g} s")
        time.sleep(delay)
        delay = min(delay * 2, 0.001)  # short sleeps: a lock held for microseconds is caught


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
        why = "a symbolic link (refused)" if err.errno == errno.ELOOP else err.strerror
        raise LedgerError(f"{path}: {why}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise LedgerError(f"{path}: not a regular file")
        data = os.pread(fd, SIZE + 1, 0)
    finally:
        os.close(fd)
    if len(data) == SIZE and _header_ok(data):
        return parse_slots(data)
    if data.startswith(FAMILY) or not data.strip(b"\0"):
        return []  # ours, from another version or damaged: the next participant rebuilds it
    raise LedgerError(f"{path}: not a threadguard host ledger")
