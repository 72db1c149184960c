"""gunicorn: each worker process takes its share of the CPUs after the fork.

    gunicorn -c examples/gunicorn_conf.py examples.wsgi_app:app
"""

import threadguard

bind = "127.0.0.1:8000"
workers = 2


def post_fork(server, worker):
    # worker.age counts the workers this arbiter started (1, 2, ...): slots
    # rotate over the shares as workers are replaced.
    threadguard.worker_budget(server.cfg.workers).apply(worker.age - 1)
