"""A WSGI app that answers with its worker's pools (for gunicorn_conf.py)."""

import json
import os


def app(environ, start_response):
    from threadpoolctl import threadpool_info
    import numpy  # noqa: F401  (OpenBLAS)
    body = json.dumps({"pid": os.getpid(), "omp": os.environ.get("OMP_NUM_THREADS"),
                       "pools": [i["num_threads"] for i in threadpool_info()]}).encode()
    start_response("200 OK", [("Content-Type", "application/json")])
    return [body]
