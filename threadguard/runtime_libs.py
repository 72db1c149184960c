"""Native thread runtimes loaded in a process: OpenMP, TBB and BLAS, in load order.

Classification is by the library's file name (vendored copies carry a hash:
``libgomp-a34b3233.so.1.0.0``). The order is the dynamic linker's (see
``libraries``). ``LD_PRELOAD`` is parsed the way ld.so does: entries
separated by spaces or colons.
"""

from __future__ import annotations

import os
import re
import shlex
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from .libraries import LoadedLibraries

# (kind, name, pattern on the file name)
PATTERNS: tuple[tuple[str, str, re.Pattern], ...] = tuple(
    (kind, name, re.compile(pattern)) for kind, name, pattern in (
        ("openmp", "libgomp", r"^libgomp(?:[-.]|$)"),
        ("openmp", "libiomp5", r"^libiomp5(?:[.]|md|$)"),
        ("openmp", "libomp", r"^libomp(?:[-.]|$)"),
        ("tbb", "libtbb", r"^libtbb(?:[-.]|_debug|\d|$)(?!.*(?:malloc|bind))"),
        ("blas", "openblas", r"^lib(?:scipy_)?openblas"),
        ("blas", "mkl", r"^libmkl_(?:rt|core)"),
        ("blas", "blis", r"^libblis"),
        ("blas", "flexiblas", r"^libflexiblas"),
    ))


class Runtime(NamedTuple):
    kind: str  # openmp | tbb | blas
    name: str  # libgomp | libiomp5 | libomp | libtbb | openblas | mkl | blis | flexiblas
    path: str
    version: str | None
    load_index: int


class PreloadEntry(NamedTuple):
    entry: str
    path: str | None  # None: a bare name, found through the linker's search path
    exists: bool | None  # None when it cannot be told (bare name)


def classify(path: str) -> tuple[str, str] | None:
    """``(kind, name)`` of a runtime library path, or None."""
    base = os.path.basename(path)
    for kind, name, pattern in PATTERNS:
        if pattern.search(base):
            return kind, name
    return None


def parse_ld_preload(value: str | None) -> list[PreloadEntry]:
    """``LD_PRELOAD``: entries separated by spaces or colons, as ld.so reads it."""
    out = []
    for entry in re.split(r"[\s:]+", value or ""):
        if not entry:
            continue
        if "/" in entry:
            out.append(PreloadEntry(entry, entry, os.path.exists(entry)))
        else:
            out.append(PreloadEntry(entry, None, None))
    return out


def ld_so_can_carry(path: str) -> bool:
    """ld.so splits LD_PRELOAD at spaces and colons: a path holding one cannot
    be preloaded by name."""
    return not re.search(r"[\s:]", path)


def preload_value(path: str, existing: str | None) -> str:
    """``LD_PRELOAD`` with ``path`` first, then the entries of ``existing``
    that still mean the same anywhere: absolute paths of existing files and
    bare library names (found on the linker's search path). Missing files,
    relative paths and anything else are dropped; ``path`` is not repeated."""
    keep = [path]
    for entry in parse_ld_preload(existing):
        if entry.path is None:
            if re.fullmatch(r"[\w.+-]+\.so(\.[\w.]+)?", entry.entry):  # a library's name
                keep.append(entry.entry)
        elif os.path.isabs(entry.path) and os.path.isfile(entry.path) \
                and os.path.realpath(entry.path) != os.path.realpath(path):
            keep.append(entry.path)
    return ":".join(dict.fromkeys(keep))


def preload_fix(path: str, existing: str | None) -> str:
    """A fix line that works when pasted (what follows ``#`` is a remark),
    or says to use ``threadguard run`` when the path cannot go into
    LD_PRELOAD at all."""
    if not ld_so_can_carry(path):
        return (f"# LD_PRELOAD cannot carry {shlex.quote(path)} (ld.so splits it at spaces "
                "and colons): start the command with threadguard run -- COMMAND, which "
                "preloads it through a link")
    return (f"export LD_PRELOAD={shlex.quote(preload_value(path, existing))}  "
            "# or: threadguard run -- COMMAND")


def _tbb_version(path: str) -> str | None:
    """oneTBB's ``TBB_runtime_version()``, only if the library is already loaded."""
    import ctypes
    try:
        lib = ctypes.CDLL(path, mode=os.RTLD_NOLOAD | os.RTLD_LAZY)
        fn = lib.TBB_runtime_version
    except (OSError, AttributeError):
        return None
    fn.restype = ctypes.c_char_p
    value = fn()
    return value.decode() if value else None


def _versions_in_process() -> dict[str, str]:
    """Versions threadpoolctl knows, by real path (this process only).

    Read from its controllers, which never call into the runtimes:
    ``threadpool_info()`` would ask every OpenMP runtime for its thread count,
    and with Intel and LLVM OpenMP both loaded that aborts the process."""
    import warnings
    try:
        from ._tpc import threadpoolctl
        module = threadpoolctl()
    except ImportError:
        return {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        controllers = module.ThreadpoolController().lib_controllers
    from .libraries import real_path
    return {real_path(c.filepath): str(c.version) for c in controllers
            if getattr(c, "version", None) and c.filepath}


def loaded_runtimes(pid: int | None = None,
                    libraries: "LoadedLibraries | None" = None) -> tuple[Runtime, ...]:
    """Every OpenMP, TBB and BLAS runtime ``pid`` has loaded, in load order."""
    from .libraries import loaded_libraries, real_path
    libs = libraries or loaded_libraries(pid)
    in_process = libs.pid == os.getpid()
    versions = _versions_in_process() if in_process else {}
    out = []
    for lib in libs.libraries:
        found = classify(lib.path)
        if found is None:
            continue
        kind, name = found
        version = versions.get(real_path(lib.path)) if versions else None
        if version is None and in_process and name == "libtbb":
            version = _tbb_version(lib.path)
        out.append(Runtime(kind, name, lib.path, version, lib.index))
    return tuple(out)


class ShippedRuntime(NamedTuple):
    kind: str
    name: str
    path: str
    distribution: str | None  # the installed package that ships it


_RECORD_KEYWORD = re.compile(r"gomp|iomp5|libomp|tbb|openblas|mkl_|blis")


def _record_paths(record: str):
    """The file paths of RECORD lines that mention a runtime's name."""
    seen = -1
    for m in _RECORD_KEYWORD.finditer(record):
        start = record.rfind("\n", 0, m.start()) + 1
        if start == seen:
            continue
        seen = start
        end = record.find(",", m.end())
        newline = record.find("\n", m.end())
        if end < 0 or (0 <= newline < end):
            continue
        yield record[start:end]


def shipped_runtimes() -> tuple[ShippedRuntime, ...]:
    """Runtimes installed in this environment, found from the packages'
    file lists (RECORD), without importing or loading anything.

    RECORD is scanned as text: building every package's file objects costs
    ~20x more in a large environment."""
    from importlib import metadata

    found: dict[str, ShippedRuntime] = {}
    for dist in metadata.distributions():
        try:
            record = dist.read_text("RECORD") or ""
        except Exception:  # a broken or unreadable RECORD must not stop the scan
            continue
        for rel in _record_paths(record):
            base = os.path.basename(rel)
            if ".so" not in base and not base.endswith((".dylib", ".dll")):
                continue
            kind_name = classify(base)
            if kind_name is None:
                continue
            path = os.path.normpath(str(dist.locate_file(rel)))
            if path not in found and os.path.exists(path):
                name = dist.metadata.get("Name") if dist.metadata else None
                found[path] = ShippedRuntime(kind_name[0], kind_name[1], path, name)
    return tuple(sorted(found.values(), key=lambda r: (r.kind, r.name, r.path)))


def intel_openmp_preload(shipped=None) -> str | None:
    """The libiomp5 to preload when Intel and GNU OpenMP are both shipped:
    Intel's runtime must be initialised first (it then serves GOMP_* too)."""
    shipped = shipped_runtimes() if shipped is None else shipped
    intel = [r for r in shipped if r.name == "libiomp5"]
    gnu = [r for r in shipped if r.name == "libgomp"]
    return intel[0].path if intel and gnu else None
