import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
# openvino's telemetry forks a child at import unless CI is set; the fork
# tears down OpenBLAS's workers, making thread counts racy.
os.environ.setdefault("CI", "true")
