"""A 2-worker Dask LocalCluster with threadguard's plugin, and its report.

    pip install distributed
    python examples/dask_cluster.py

Each worker gets its share of the host (CPUs // workers // task threads);
the report groups workers by host and flags a host whose workers together
could run more threads than it has CPUs.
"""

import numpy as np
from distributed import Client, LocalCluster

from threadguard.integrations import dask as tg_dask


def matmul(seed):
    a = np.random.default_rng(seed).random((300, 300))
    return float((a @ a).sum())


if __name__ == "__main__":
    with LocalCluster(n_workers=2, processes=True, threads_per_worker=1,
                      dashboard_address=None) as cluster, Client(cluster) as client:
        tg_dask.register(client)
        print(sum(client.gather(client.map(matmul, range(20)))) > 0)
        report = tg_dask.cluster_report(client)
        for host, h in report["hosts"].items():
            print(f"host {host}: {h['cpus']} CPUs, {len(h['workers'])} workers, "
                  f"{h['threads_demanded']} threads demanded")
            for address, w in h["workers"].items():
                print(f"  {address}: budget {w['threadguard']['threads_per_task']} thread(s) "
                      f"per task, pools {[p['num_threads'] for p in w['pools']]}")
        print("findings:", [f["code"] for f in report["findings"]] or "none")
