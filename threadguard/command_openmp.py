"""Which OpenMP runtimes a command will load, read from it before it runs.

``threadguard run`` preloads Intel OpenMP only when the command will load
both Intel's and GNU's (Intel's must then start first, and it serves the
GOMP_* symbols too); a preload into a program that loads one runtime, or
none (benchmark_app runs on TBB), only adds a runtime. A Python command's
source is read: the modules it imports (anywhere in the file, ``-c`` code,
``-m`` module) map to installed distributions, whose files and direct
requirements ship the runtimes; runtime file names it loads by hand
(``ctypes.CDLL("libiomp5.so")``) count too. Other programs are not
predicted: nothing is preloaded into them.
"""

from __future__ import annotations

import ast
import os
import re

from .runtime_libs import ShippedRuntime

_LIBRARY_NAME = re.compile(r"lib(gomp|iomp5)[\w.-]*\.so")
_INTERPRETER_OPTIONS_WITH_VALUE = ("-W", "-X", "--check-hash-based-pycs")
_FLAGS_WITHOUT_VALUE = set("bBdEhiIOPqRsSuvVx")


def python_source(cmd: list[str], program: str) -> tuple[str, str] | None:
    """``(label, source)`` of what a Python command runs, or None when it is
    not Python or the source cannot be read. ``program``: ``cmd[0]`` resolved."""
    if os.path.basename(program).startswith("python"):
        args = cmd[1:]
        i = 0
        while i < len(args):
            arg = args[i]
            # -c and -m end a cluster of short options (-Bc CODE, -um MOD, -cCODE)
            short = arg[1:] if arg.startswith("-") and not arg.startswith("--") else ""
            for letter in "cm":
                at = short.find(letter)
                if at < 0 or any(flag not in _FLAGS_WITHOUT_VALUE for flag in short[:at]):
                    continue
                value = short[at + 1:] or (args[i + 1] if i + 1 < len(args) else None)
                if value is None:
                    return None
                return ("-c code", value) if letter == "c" else _module_source(value)
            if arg in _INTERPRETER_OPTIONS_WITH_VALUE:
                i += 2
                continue
            if arg.startswith("-"):
                i += 1
                continue
            return _file_source(arg)
        return None
    return _file_source(program) if python_script(program) else None


def python_script(program: str) -> bool:
    """A script whose #! line runs Python."""
    try:
        with open(program, "rb") as f:
            first = f.readline(256)
    except OSError:
        return False
    return first.startswith(b"#!") and b"python" in first


def runs_python(program: str) -> bool:
    """A Python interpreter, or a Python script."""
    return os.path.basename(program).startswith("python") or python_script(program)


def _file_source(path: str) -> tuple[str, str] | None:
    try:
        with open(path, "rb") as f:
            return os.path.basename(path), f.read(4 << 20).decode("utf-8", "replace")
    except OSError:
        return None


def _module_source(name: str) -> tuple[str, str] | None:
    spec = _find_without_importing(name)
    if spec is None or not spec.origin or not spec.origin.endswith(".py"):
        return (f"-m {name}", f"import {name}") if name.isidentifier() else None
    found = _file_source(spec.origin)
    return (f"-m {name}", f"import {name}\n" + found[1]) if found else None


def _find_without_importing(name: str):
    """The spec of a module, found on ``sys.path`` with no package's
    ``__init__`` run (``importlib.util.find_spec`` imports the parents)."""
    import importlib.machinery
    import sys
    spec, path = None, None
    parts = name.split(".")
    if not all(p.isidentifier() for p in parts):
        return None
    for i in range(len(parts)):
        try:
            spec = importlib.machinery.PathFinder.find_spec(".".join(parts[:i + 1]),
                                                            path if i else sys.path)
        except (ImportError, ValueError, OSError):
            return None
        if spec is None:
            return None
        path = spec.submodule_search_locations
        if i + 1 < len(parts) and not path:
            return None
    if spec.submodule_search_locations:  # a package run with -m: its __main__
        main = importlib.machinery.PathFinder.find_spec(name + ".__main__",
                                                        spec.submodule_search_locations)
        spec = main or spec
    return spec


def _parsed(source: str) -> ast.AST | None:
    try:
        return ast.parse(source)
    except (SyntaxError, ValueError):
        return None


def imported_packages(source: str, tree: ast.AST | None = None) -> set[str]:
    """Top-level names of every module the source imports."""
    tree = _parsed(source) if tree is None else tree
    names = set()
    for node in ast.walk(tree) if tree is not None else ():
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module.split(".")[0])
    return names


def runtimes_loaded(source: str, shipped: tuple[ShippedRuntime, ...]) -> dict[str, str]:
    """OpenMP runtime name -> why the source will load it (what brings it)."""
    from importlib import metadata

    tree = _parsed(source)
    if tree is None:
        return {}
    by_dist: dict[str, list[ShippedRuntime]] = {}
    for r in shipped:
        if r.kind == "openmp" and r.distribution:
            by_dist.setdefault(_normal(r.distribution), []).append(r)
    found: dict[str, str] = {}
    strings = (node.value for node in ast.walk(tree)
               if isinstance(node, ast.Constant) and isinstance(node.value, str))
    for text in strings:  # a file name in code, not in a comment
        for match in _LIBRARY_NAME.finditer(text):
            name = "libgomp" if match.group(1) == "gomp" else "libiomp5"
            found.setdefault(name, f"loads {match.group(0)}")
    if not by_dist:
        return found
    owners = metadata.packages_distributions()
    for package in sorted(imported_packages(source, tree)):
        for dist in owners.get(package, ()):
            for r in by_dist.get(_normal(dist), ()):
                found.setdefault(r.name, f"imports {package} ({dist} ships {r.name})")
            for required in _requirements(dist):
                for r in by_dist.get(required, ()):
                    found.setdefault(r.name, f"imports {package} ({dist} needs {required})")
    return found


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirements(dist: str) -> list[str]:
    from importlib import metadata
    try:
        requires = metadata.requires(dist) or []
    except metadata.PackageNotFoundError:
        return []
    out = []
    for req in requires:
        if "extra ==" in req:
            continue  # an optional extra: not installed with it by default
        m = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", req)
        if m:
            out.append(_normal(m.group(1)))
    return out
