"""What a command will load, read from its source before it runs."""

from __future__ import annotations

import shutil
import sys

from threadguard.command_openmp import imported_packages, python_source, runtimes_loaded
from threadguard.runtime_libs import shipped_runtimes


def test_the_source_a_python_command_runs(tmp_path):
    script = tmp_path / "job.py"
    script.write_text("import numpy\n")
    py = sys.executable
    assert python_source([py, "-c", "import torch"], py) == ("-c code", "import torch")
    assert python_source([py, "-X", "importtime", "-W", "error", str(script)], py)[1] == \
        "import numpy\n"
    label, source = python_source([py, "-m", "json.tool"], py)
    assert label == "-m json.tool" and source.startswith("import json.tool\n")
    shebang = tmp_path / "tool"
    shebang.write_text(f"#!{py}\nimport sklearn\n")
    assert "import sklearn" in python_source([str(shebang)], str(shebang))[1]
    assert python_source(["true"], shutil.which("true")) is None  # not Python: not predicted
    assert python_source([py], py) is None  # an interactive interpreter


def test_imports_anywhere_but_relative_ones():
    source = ("import os.path, numpy as np\nfrom sklearn.cluster import KMeans\n"
              "def f():\n    import torch\nfrom . import sibling\n")
    assert imported_packages(source) == {"os", "numpy", "sklearn", "torch"}
    assert imported_packages("def (:\n") == set()


def test_what_brings_each_runtime_here():
    shipped = shipped_runtimes()
    loads = runtimes_loaded("import sklearn.cluster\n", shipped)
    assert set(loads) == {"libgomp"} and "scikit-learn" in loads["libgomp"]
    assert runtimes_loaded("import json\n", shipped) == {}
    both = runtimes_loaded("import sklearn\nimport ctypes\nctypes.CDLL('libiomp5.so')\n", shipped)
    assert set(both) == {"libgomp", "libiomp5"}
