"""threadguard run's start-up hook for Python children: OpenVINO gets the plan.

``threadguard run`` puts this directory first on ``PYTHONPATH`` and the
plan's CPU properties in ``THREADGUARD_OPENVINO`` (JSON). When the program
imports openvino, ``Core.compile_model`` for the CPU device adds them to
what the program asked for; the program's own values win, whether given to
``compile_model`` or set before with ``Core.set_property``. A program that
sets ``PERFORMANCE_HINT`` itself keeps the streams its hint chooses; only
the thread count is added. ``THREADGUARD_VERBOSE=1``: say what was done, on
stderr.

``run --scope host`` also sets ``THREADGUARD_HOST_FOLLOW=PID:THREADS:PIN:CPUS``: the
program with that pid (the command itself, which ``run`` became by exec;
not its children) enters a host-scoped budget for its whole life, taking
over the ledger slot ``run`` held for it, so its pools follow its share as
other participants come and go.

Self-contained on purpose: it runs in programs that may not have
threadguard installed, and it imports nothing until openvino is imported
(or, with ``--scope host``, threadguard itself when it can be imported).
The ``sitecustomize`` this one shadows (if any) is run after it.
"""

import os
import sys

_DIR = os.path.dirname(os.path.abspath(__file__))
_OURS = ("INFERENCE_NUM_THREADS", "NUM_STREAMS", "PERFORMANCE_HINT", "ENABLE_CPU_PINNING",
         "ENABLE_HYPER_THREADING", "SCHEDULING_CORE_TYPE")
_STREAMS_FROM_HINT = ("NUM_STREAMS", "PERFORMANCE_HINT")


def _say(message):
    if os.environ.get("THREADGUARD_VERBOSE") == "1":
        sys.stderr.write(f"threadguard: {message}\n")


def _plan(text):
    """The properties from their JSON text (read when openvino is imported:
    a program that never imports it pays nothing)."""
    import json
    try:
        values = json.loads(text)
    except ValueError:
        return {}
    if not isinstance(values, dict):
        return {}
    return {k: v for k, v in values.items() if k in _OURS}


def _is_cpu(device):
    return device is not None and str(device).split(":")[0].split(".")[0].upper() == "CPU"


def _names(config):
    if isinstance(config, dict):
        return {str(k) for k in config}
    if isinstance(config, tuple) and config:  # set_property(("NAME", value))
        return {str(config[0])}
    return set()


_OWN = "_threadguard_own"  # on each Core: the names its program set for the CPU device


def _patch(openvino, plan):
    core_class = getattr(openvino, "Core", None)
    if not plan or core_class is None or getattr(core_class, "_threadguard_patched", False):
        return
    set_property = core_class.set_property
    compile_model = core_class.compile_model

    def patched_set_property(self, *args, **kwargs):
        # (properties), (property), (device, properties), (device, property),
        # or by keyword; no device: every device, the CPU too.
        rest = list(args)
        device = kwargs.get("device_name")
        if device is None and len(rest) == 2:
            device = rest.pop(0)
        given = rest[0] if rest else kwargs.get("properties", kwargs.get("property"))
        if device is None or _is_cpu(device):
            try:
                own = getattr(self, _OWN)
            except AttributeError:
                own = set()
                try:
                    setattr(self, _OWN, own)
                except AttributeError:  # a Core without attributes: nothing remembered
                    pass
            own.update(_names(given))
        return set_property(self, *args, **kwargs)

    def patched_compile_model(self, model, device_name=None, config=None, *args, **kwargs):
        if _is_cpu(device_name):
            own = set(getattr(self, _OWN, ())) | _names(config)
            skip = set(own)
            if "PERFORMANCE_HINT" in own:
                skip.update(_STREAMS_FROM_HINT)  # its hint chooses the streams
            added = {k: v for k, v in plan.items() if k not in skip}
            if added:
                config = dict(config or {}, **added)
                _say("OpenVINO CPU properties added: "
                     + ", ".join(f"{k}={v}" for k, v in added.items())
                     + (f" (the program's own: {', '.join(sorted(own & set(_OURS)))})"
                        if own & set(_OURS) else ""))
            else:
                _say("OpenVINO CPU properties: the program set them all itself")
        return compile_model(self, model, device_name, config, *args, **kwargs)

    core_class.set_property = patched_set_property
    core_class.compile_model = patched_compile_model
    core_class._threadguard_patched = True


class _AfterImport:
    """Patches openvino once it is imported (a finder that only watches)."""

    def __init__(self, text):
        self.plan = text  # the JSON text, parsed once openvino is imported
        self.busy = False

    def find_spec(self, name, path=None, target=None):
        if name != "openvino" or self.busy:
            return None
        import importlib.util
        self.busy = True
        try:
            spec = importlib.util.find_spec(name)
        finally:
            self.busy = False
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return None
        loader, plan = spec.loader, self.plan

        class Loader:
            """openvino's own loader, which patches once it has run; all
            else (resources, get_data) is the original's."""

            def __getattr__(self, name):
                return getattr(loader, name)

            def create_module(self, spec):
                return loader.create_module(spec)

            def exec_module(self, module):
                loader.exec_module(module)
                try:
                    _patch(module, _plan(plan))
                except Exception as err:  # never break the program
                    _say(f"OpenVINO not patched: {err!r}")

        spec.loader = Loader()
        sys.meta_path[:] = [f for f in sys.meta_path if f is not self]
        return spec


def _install():
    text = os.environ.get("THREADGUARD_OPENVINO")
    if not text:
        return
    if "openvino" in sys.modules:
        _patch(sys.modules["openvino"], _plan(text))
    else:
        sys.meta_path.insert(0, _AfterImport(text))


_held = []  # the host-scoped section the program runs in (--scope host)


def _cpulist(text):
    """``0-3,8`` as a set of CPUs."""
    out = set()
    for part in text.split(","):
        first, _, last = part.partition("-")
        out.update(range(int(first), int(last or first) + 1))
    return out


def _follow_host():
    fields = os.environ.get("THREADGUARD_HOST_FOLLOW", "").split(":")
    pid, threads, pin, cpus = (fields + ["", "", "", ""])[:4]
    if pid != str(os.getpid()) or not threads.isdigit():
        return  # not run --scope host, or a child of the command: sized at its start
    try:
        import threadguard
    except ImportError:
        _say("threadguard cannot be imported by this interpreter: the command keeps the "
             "share it started with")
        return
    if pin == "1" and cpus:  # the CPUs it may use, as before run pinned it to its share
        try:
            os.sched_setaffinity(0, _cpulist(cpus))
        except (OSError, ValueError):
            pass
    section = threadguard.budget(int(threads), scope="host", pin=pin == "1",
                                 allow_oversubscription=True)
    section.__enter__()
    _held.append(section)
    _say(f"following the host ledger: {section.threads} threads now")


def _chain():
    """Run the sitecustomize this one shadows, as Python would have."""
    import importlib.machinery
    rest = [p for p in sys.path if os.path.abspath(p or ".") != _DIR]
    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", rest)
    if spec is None or spec.loader is None:
        return
    import importlib.util
    module = importlib.util.module_from_spec(spec)
    sys.modules["sitecustomize"] = module
    spec.loader.exec_module(module)


try:
    _install()
    _follow_host()
except Exception as _err:  # never break the program
    _say(f"start-up hook failed: {_err!r}")
_chain()
