"""The `ray` executor: one Ray task per video, on a local Ray instance or an existing cluster.

The stage hands over the same picklable per-video function and work items as to the local executor;
each becomes a Ray task. Tasks of detection and embedding stages ask for a share of a GPU when the
cluster has GPUs (``gpus_per_task``, default 0.5: two workers per GPU, so one decodes while the other
runs the network). ``address="auto"`` (or ``ray://...``) joins a running cluster; without an address a
local instance is started with ``num_cpus`` CPUs. Results stream back as tasks finish, with at most
``max_in_flight`` tasks submitted at once so a long video list does not sit in the object store.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from .errors import InputError, requires
from .executors import EXECUTORS, Executor

log = logging.getLogger(__name__)


def ensure_ray(address: str = "", num_cpus: int | None = None, num_gpus: int | None = None) -> Any:
    """Import Ray and connect to ``address`` or start a local instance (once per process)."""
    ray = requires("ray", "ray")
    if not ray.is_initialized():
        if address:
            log.info("ray: joining the cluster at %s", address)
            try:
                ray.init(address=address, log_to_driver=False)
            except (ConnectionError, ValueError, RuntimeError) as exc:
                what = "no running Ray cluster found" if address == "auto" else f"cannot join {address}"
                log.debug("ray.init(address=%r) failed: %s", address, exc)
                raise InputError(
                    f"ray: {what}; start one with `ray start --head` (docs/scaling.md), or leave "
                    "--ray-address empty to start a local instance"
                ) from None
        else:
            cpus = num_cpus or os.cpu_count() or 1
            log.info("ray: starting a local instance with %d CPUs", cpus)
            ray.init(
                num_cpus=cpus,
                num_gpus=num_gpus,
                include_dashboard=False,
                log_to_driver=False,
                configure_logging=False,
            )
    return ray


def shutdown_ray() -> None:
    """Disconnect from Ray (and stop the local instance this process started)."""
    try:
        import ray
    except ImportError:
        return
    if ray.is_initialized():
        ray.shutdown()


def apply_to_item(fn: Callable[[Any], Any], item: Any) -> Any:
    """The body of every Ray task: ``fn(item)`` (fn travels by reference, so any picklable callable works)."""
    from .memory import call_and_release

    return call_and_release(fn, item)


@EXECUTORS.register("ray")
class RayExecutor(Executor):
    """Runs a stage's per-video function as Ray tasks; yields ``(item, result)`` as tasks finish."""

    def __init__(
        self,
        address: str = "",
        use_gpu: bool = False,
        gpus_per_task: float = 0.5,
        cpus_per_task: float = 1.0,
        num_cpus: int | None = None,
        max_in_flight: int | None = None,
        **_: Any,
    ) -> None:
        self.ray = ensure_ray(address, num_cpus)
        cluster_gpus = float(self.ray.cluster_resources().get("GPU", 0.0))
        self.num_gpus = float(gpus_per_task) if use_gpu and cluster_gpus > 0 else 0.0
        self.num_cpus = float(cpus_per_task)
        cpus = float(self.ray.cluster_resources().get("CPU", 1.0))
        self.max_in_flight = max_in_flight or max(2, int(2 * cpus / max(self.num_cpus, 1e-3)))

    def map(self, fn: Callable[[Any], Any], items: Iterable[Any]) -> Iterator[tuple[Any, Any]]:
        ray = self.ray
        remote = ray.remote(apply_to_item).options(
            num_cpus=self.num_cpus, num_gpus=self.num_gpus, max_retries=0
        )
        pending: dict[Any, Any] = {}
        queue = list(items)
        queue.reverse()
        while queue or pending:
            while queue and len(pending) < self.max_in_flight:
                item = queue.pop()
                pending[remote.remote(fn, item)] = item
            done, _ = ray.wait(list(pending), num_returns=1)
            ref = done[0]
            item = pending.pop(ref)
            try:
                result = ray.get(ref)
            except ray.exceptions.RayTaskError as exc:
                for other in pending:
                    ray.cancel(other)
                raise exc.as_instanceof_cause() from None
            yield item, result
