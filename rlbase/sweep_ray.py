"""Ray's start and stop for `rlbase sweep`: a local Ray of the sweep's own (or a cluster joined with
--address), started quiet, and stopped with the sweep."""

from __future__ import annotations

import contextlib
import os
from typing import Any, Iterator

from rlbase.errors import RlbaseError, UsageError


def start_ray(address: str | None, num_cpus: int | None = None) -> bool:
    """Join the cluster at `address`, or start Ray in this process (quiet, no dashboard). False where
    this process was already connected to a Ray (the caller's own `ray.init`)."""
    try:
        import ray
    except ImportError:
        raise UsageError("rlbase sweep needs Ray Tune: pip install 'rlbase[sweep]'") from None
    if ray.is_initialized():
        return False
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")  # rlbase runs log for themselves
    # Training points come before the first evaluation, and carry no eval/mean_reward yet.
    os.environ.setdefault("TUNE_DISABLE_STRICT_METRIC_CHECKING", "1")
    # Tune's console output at verbose=0 is nothing with its classic reporter; its newer one still prints
    # a configuration box and a results path. rlbase says what the sweep does and where it writes.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    try:
        if address:
            ray.init(address=address, log_to_driver=False, configure_logging=False)
        else:
            # address="local": a Ray of its own, even where `ray start` left a cluster on this machine
            # (plain ray.init() would join that one, and go down with it).
            ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, log_to_driver=False,
                     configure_logging=False)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise RlbaseError(f"cannot start Ray{f' at {address}' if address else ''}: {str(exc).splitlines()[0]}") from None
    return True


def stop_ray() -> None:
    """`ray.shutdown()` of the Ray this process started, with its autoscaler monitor killed first.
    Ray stops the GCS before the monitor, and the monitor's SIGTERM handler then reports its own end
    to that GCS, which is gone: it hangs until Ray's one-second grace period runs out and Ray kills it
    (1.0 of the 1.35 s that `ray.shutdown()` takes here; told to stop while the GCS still runs, it
    still takes 0.7 s). A local Ray's monitor has nothing to save, so it gets SIGKILL at once, as it
    would a second later. With a Ray whose internals differ, plain `ray.shutdown()`."""
    import ray

    try:
        from ray._private import ray_constants
        from ray._private import worker as ray_worker

        node = ray_worker._global_node
        kill_all = node.kill_all_processes
        monitors = [info.process for info in node.all_processes.get(ray_constants.PROCESS_TYPE_MONITOR, [])]
    except (ImportError, AttributeError):
        node = None

    def monitor_first(*args: Any, **kwargs: Any) -> None:
        for process in monitors:
            with contextlib.suppress(Exception):
                process.kill()
                process.wait(timeout=1)
        kill_all(*args, **kwargs)

    if node is not None:
        node.kill_all_processes = monitor_first
    ray.shutdown()


@contextlib.contextmanager
def trials_in_prestarted_workers() -> Iterator[None]:
    """Let Tune's trial actors start in the Python workers Ray pre-started with `ray.init`.

    Tune creates every trial actor with a runtime env that sets PL_DISABLE_FORK=1 (a PyTorch Lightning
    workaround, ray-project/ray#28197). Ray only hands an actor an idle worker started with the same
    runtime env, and its pre-started workers have none, so each trial actor got a new Python process
    (1.5-2 s here before the trial's own imports) while the pre-started ones sat idle. rlbase trials do
    not use Lightning: the variable is left out while the sweep runs, and put back after. Where Tune's
    internals differ, nothing changes (a new worker per trial actor, as before)."""
    try:
        from ray.tune.execution.class_cache import DEFAULT_ENV_VARS
    except ImportError:
        yield
        return
    saved = dict(DEFAULT_ENV_VARS)
    DEFAULT_ENV_VARS.pop("PL_DISABLE_FORK", None)
    try:
        yield
    finally:
        DEFAULT_ENV_VARS.clear()
        DEFAULT_ENV_VARS.update(saved)
