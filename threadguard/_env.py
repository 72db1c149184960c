"""Fast, exact reads and writes of this process's environment.

``os.environ`` encodes the key and value on every access (~1 us each); a
budget touches seven variables on entry and on exit, so the guard goes
through the same mapping with keys encoded once. The result is identical:
``putenv``/``unsetenv`` for C code and children, ``os.environ`` for Python.
"""

from __future__ import annotations

import os

_data = getattr(os.environ, "_data", None)
_fast = isinstance(_data, dict) and os.name == "posix"


class Variable:
    __slots__ = ("name", "key")

    def __init__(self, name: str):
        self.name = name
        self.key = os.fsencode(name) if _fast else name

    def get(self) -> str | None:
        if _fast:
            value = _data.get(self.key)
            return None if value is None else os.fsdecode(value)
        return os.environ.get(self.name)

    def get_raw(self):
        """The stored value (bytes on POSIX): cheap to compare and to put back."""
        return _data.get(self.key) if _fast else os.environ.get(self.name)

    def set_raw(self, value) -> None:
        if not _fast:
            if value is None:
                os.environ.pop(self.name, None)
            else:
                os.environ[self.name] = value
            return
        if value is None:
            if self.key in _data:
                os.unsetenv(self.key)
                del _data[self.key]
        else:
            os.putenv(self.key, value)
            _data[self.key] = value


def encode(text: str):
    return os.fsencode(text) if _fast else text


def set_all(variables: tuple[Variable, ...], value, only_if_set: bool = False) -> tuple:
    """Set the variables to one stored value (with ``only_if_set``, just those
    already present); return what they held before."""
    if not _fast:
        before = tuple(v.get_raw() for v in variables)
        for v, old in zip(variables, before):
            if old is not None or not only_if_set:
                v.set_raw(value)
        return before
    data, putenv = _data, os.putenv
    before = []
    for v in variables:
        current = data.get(v.key)
        before.append(current)
        if current != value and (current is not None or not only_if_set):
            putenv(v.key, value)
            data[v.key] = value
    return tuple(before)


def restore_all(variables: tuple[Variable, ...], before: tuple) -> None:
    """Put back what ``set_all`` returned."""
    if not _fast:
        for v, value in zip(variables, before):
            v.set_raw(value)
        return
    data = _data
    for v, value in zip(variables, before):
        key = v.key
        if data.get(key) != value:
            if value is None:
                os.unsetenv(key)
                del data[key]
            else:
                os.putenv(key, value)
                data[key] = value


def snapshot() -> dict:
    """The whole environment as stored (cheap to copy and compare)."""
    return dict(_data) if _fast else dict(os.environ)


def changed_since(before: dict, ignore=()) -> list[str]:
    """Names whose value differs from ``before`` (added, removed or changed),
    but those in ``ignore``. ``before`` is a private snapshot: the ignored
    names are aligned in it, so an unchanged environment costs one compare."""
    now = _data if _fast else os.environ
    for name in ignore:
        key = encode(name)
        if key in now:
            before[key] = now[key]
        else:
            before.pop(key, None)
    if now == before:
        return []
    keys = [k for k, v in now.items() if before.get(k, _MISSING) != v]
    keys += [k for k in before if k not in now]
    return sorted(os.fsdecode(k) if isinstance(k, bytes) else k for k in keys)


_MISSING = object()
