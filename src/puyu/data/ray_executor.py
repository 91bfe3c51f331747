"""Ray as the scale-out engine: the same stages, markers and shard function as the local executor, with
each (stage, shard) a Ray task.

The driver runs the global steps' `decide` (one pass over compact signatures); shards run wherever Ray
schedules them. Workers read and write `workdir` and the output directory directly, so on a cluster
those must be on a shared filesystem (NFS, a FUSE-mounted bucket); on one machine any path works.
Because markers are the same files the local executor writes, a run started with one executor can be
resumed with the other.

`address=None` starts a private local Ray instance (what the tests use) and shuts it down afterwards;
`address="auto"` or "ray://host:10001" joins an existing cluster.
"""

from __future__ import annotations

from collections.abc import Iterator

from puyu.data.executor import Job, execute, run_shard
from puyu.errors import PuyuError


def _run_shard_task(job: Job, j: int, shard_index: int) -> dict:
    return run_shard(job, j, shard_index)


class RayExecutor:
    """Run shards as Ray tasks. `num_cpus` limits a locally started instance; `max_in_flight` bounds
    how many tasks are submitted at once."""

    def __init__(self, address: str | None = None, num_cpus: int | None = None, max_in_flight: int = 64):
        self.address = address
        self.num_cpus = num_cpus
        self.max_in_flight = max_in_flight

    def run(self, job: Job, progress: bool = True) -> None:
        try:
            import ray
        except ImportError as e:
            raise PuyuError("the ray executor needs Ray: pip install 'puyu[ray]'") from e
        started = False
        if not ray.is_initialized():
            kwargs = {"include_dashboard": False, "log_to_driver": False}
            if self.address:
                ray.init(address=self.address, **kwargs)
            else:
                ray.init(num_cpus=self.num_cpus, **kwargs)
            started = True
        try:
            task = ray.remote(_run_shard_task)
            job_ref = ray.put(job)  # shipped to each node once, not once per task

            def mapper(j: int, todo: list[int]) -> Iterator[dict]:
                queue = list(todo)
                pending = []
                while queue or pending:
                    while queue and len(pending) < self.max_in_flight:
                        pending.append(task.remote(job_ref, j, queue.pop(0)))
                    done, pending = ray.wait(pending, num_returns=1)
                    yield ray.get(done[0])

            execute(job, mapper, progress)
        finally:
            if started:
                ray.shutdown()
