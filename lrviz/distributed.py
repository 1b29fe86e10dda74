"""Fan-out over Ray (the optional extra ``pip install lrviz[ray]``): one task per layer or per plan.

:class:`RayExecutor` runs the per-layer work of :func:`lrviz.sensitivity.measure_sensitivity` and the
per-plan work of :func:`lrviz.budget.sweep` (``executor=...``) as Ray tasks, each on a worker of its
own with its own device (a GPU when the cluster has them, else CPUs). The driver — this process —
ships the run once (:func:`ray.put`; the model and the calibration tensors are lrviz's own in-memory
objects, never a user's file), gathers the results as they finish and does everything else itself:
it writes each layer into the same disk cache as a local run (same key, same files) and measures the
anchors, and it assembles the sweep's rows in the local order. So a later local run, the dashboard or
``lrviz project`` read what a Ray run measured, and the results are the local ones.

Identical results. A task runs the local code (:class:`lrviz.sensitivity.LayerJob`,
:class:`lrviz.budget.PlanJob`) on the same inputs; what could still differ is the arithmetic. Float
sums inside torch's kernels may be split differently with another thread count (measured here:
MobileNet-V2's logits differ by 8e-16 between 1 and 2 threads, a fine-tune's weights by 6e-7; the
demo's sensitivities and ResNet-18's logits are bitwise equal), so by default every task runs with
the driver's thread count (``torch.get_num_threads()``) and reserves that many CPUs, which keeps
tasks from oversubscribing the cores. ``threads=1`` gives more workers per machine at the price of
that guarantee. Another kind of device (a GPU worker for a CPU driver) or another CPU model gives
results equal only to rounding.

Addresses: None (or ``"local"``) starts a private local Ray with this machine's CPUs and GPUs;
``"HOST:PORT"`` or ``"ray://HOST:PORT"`` connects to a running cluster (checked first, so an
unreachable one is one clear error instead of Ray's minutes of retries), and ships this lrviz to
its workers (``runtime_env={"py_modules": [...]}``: they run the driver's code); ``"auto"`` connects
to the cluster Ray itself would find (``RAY_ADDRESS``, or the one last started on this machine). A
Ray already initialised in this process is reused as it is.

The dashboard reads the address from :data:`ADDRESS_ENV` (:func:`executor_from_env`).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path

from .errors import LrvizError, short_cause

__all__ = ["ADDRESS_ENV", "THREADS_ENV", "RayExecutor", "ray_init", "check_address", "executor_from_env", "backend_info",
           "open_executor"]

log = logging.getLogger(__name__)

#: Environment variable naming the Ray cluster the dashboard uses (``local`` = a local Ray; unset or
#: empty = no Ray).
ADDRESS_ENV = "LRVIZ_RAY_ADDRESS"
#: Environment variable with the torch threads of each task (default: this process's thread count).
THREADS_ENV = "LRVIZ_RAY_THREADS"

#: Seconds to wait for a TCP connection to a cluster's address before calling it unreachable.
CONNECT_TIMEOUT_S = 5.0

#: Seconds between two looks at ``should_stop`` while tasks run.
POLL_S = 0.25

_INSTALL = "--ray needs Ray: pip install lrviz[ray]"


def _import_ray():
    try:
        import ray
    except ImportError:
        raise LrvizError(_INSTALL) from None
    return ray


def _machine_cpus() -> int:
    """CPUs this process may use (its affinity mask where the OS has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def check_address(address: str | None) -> str:
    """``address`` normalised (``"local"`` for None or empty), after checking its form.

    Allowed: ``local``, ``auto``, ``HOST:PORT``, ``ray://HOST:PORT``. Raises :class:`LrvizError`
    otherwise (nothing is contacted here)."""
    a = (address or "").strip()
    if not a or a.lower() == "local":
        return "local"
    if a.lower() == "auto":
        return "auto"
    _host_port(a)
    return a


def _host_port(address: str) -> tuple[str, int]:
    usage = "use HOST:PORT (a running cluster's head, e.g. 10.0.0.5:6379), ray://HOST:PORT, auto, or nothing for a local Ray"
    rest = address[len("ray://"):] if address.startswith("ray://") else address
    host, sep, port = rest.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536 or "/" in rest:
        raise LrvizError(f"bad Ray address {address!r}; {usage}")
    return host, int(port)


def _auto_address() -> str:
    """The address ``ray.init(address="auto")`` would use: ``$RAY_ADDRESS``, else the cluster last
    started on this machine (``/tmp/ray/ray_current_cluster``, see ``ray.init``)."""
    env = os.environ.get("RAY_ADDRESS", "").strip()
    if env:
        return env
    try:
        current = Path("/tmp/ray/ray_current_cluster").read_text().strip()
    except OSError:
        current = ""
    if not current:
        raise LrvizError("--ray auto: no running Ray cluster found (RAY_ADDRESS is not set and none was started on this "
                         "machine); start one with 'ray start --head', give its address, or use --ray alone for a local Ray")
    return current


def _check_reachable(address: str) -> None:
    host, port = _host_port(address)
    try:
        socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as e:
        raise LrvizError(f"cannot reach the Ray cluster at {address} ({short_cause(e)}); start it with 'ray start --head' "
                         "or check the address") from None


_started_here = False  # whether this module started (or connected) the Ray of this process


def ray_init(address: str | None = None):
    """Ray, initialised: reused when this process already has it, else connected to ``address`` or
    started locally (see the module docstring). Returns the ``ray`` module.

    Raises :class:`LrvizError` when Ray is not installed, the address is malformed or unreachable, or
    Ray refuses to start or connect. Ray's own log lines are kept off the terminal: its logger at
    ERROR, the workers' output not forwarded (errors come back as exceptions)."""
    global _started_here
    ray = _import_ray()
    if ray.is_initialized():
        return ray
    a = check_address(address)
    quiet = dict(log_to_driver=False, logging_level=logging.ERROR, configure_logging=True)
    if a == "local":
        import torch

        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # a private cluster: nothing to report
        kw = dict(address="local", num_cpus=_machine_cpus(), num_gpus=torch.cuda.device_count(), include_dashboard=False, **quiet)
    else:
        target = _auto_address() if a == "auto" else a
        _check_reachable(target)
        kw = dict(address=target, runtime_env={"py_modules": [str(Path(__file__).parent)]}, **quiet)
    try:
        ray.init(**kw)
    except Exception as e:  # ConnectionError, RuntimeError, ValueError ... from Ray: one line
        raise LrvizError(f"cannot {'start a local Ray' if a == 'local' else f'connect to the Ray cluster at {a}'} "
                         f"({short_cause(e)})") from None
    _started_here = True
    return ray


# --- the worker side ------------------------------------------------------------------------------

#: Per worker process: the token of the run it last prepared, and what it prepared (one run at a time).
_PREPARED: dict = {}


def _run_item(token: str, box: list, item, threads: int):
    """A task: ``job.prepare(device).run(item)``, the prepared state kept for the run's next task.

    ``box`` holds the job's object reference (in a list, so Ray does not fetch it for every task)."""
    import ray
    import torch

    if threads:
        torch.set_num_threads(int(threads))
    state = _PREPARED.get(token)
    if state is None:
        _PREPARED.clear()
        try:
            job = ray.get(box[0])
        except ray.exceptions.RaySystemError as e:
            raise LrvizError(f"a Ray worker cannot rebuild the job ({short_cause(e)}): the model's code must be importable on "
                             "every worker") from None
        dev = torch.device("cuda") if ray.get_gpu_ids() and torch.cuda.is_available() else torch.device("cpu")
        state = job.prepare(dev)
        _PREPARED[token] = state
    return state.run(item)


_REMOTE: dict = {}


def _remote(gpu: bool):
    """The task function for CPU or GPU workers (GPU tasks: Ray's default of one task per worker process,
    so a process never keeps a CUDA context of a GPU it no longer holds)."""
    ray = _import_ray()
    if gpu not in _REMOTE:
        _REMOTE[gpu] = ray.remote(num_gpus=1)(_run_item) if gpu else ray.remote(_run_item)
    return _REMOTE[gpu]


# --- the driver side ------------------------------------------------------------------------------

class RayExecutor:
    """Runs a job's items as Ray tasks, one per item (a layer, a plan), each on a worker of its own.

    Parameters
    ----------
    address : str, optional
        See :func:`ray_init`.
    threads : int, optional
        torch threads of each task, and CPUs it reserves on CPU workers (default: this process's
        ``torch.get_num_threads()``, which makes the arithmetic that of a local run).

    Attributes
    ----------
    backend : str
        ``"ray"``.
    workers : int
        Tasks that can run at once: the cluster's GPUs (tasks on GPUs), else its CPUs divided by
        ``threads`` per machine.
    threads : int
    gpus : int
    address : str
    """

    backend = "ray"

    def __init__(self, address: str | None = None, threads: int | None = None):
        import torch

        self._ray = ray_init(address)
        self.address = check_address(address)
        self.threads = int(threads) if threads else int(torch.get_num_threads())
        if self.threads < 1:
            raise LrvizError(f"threads per Ray task must be at least 1; got {threads}")
        nodes = [n.get("Resources", {}) for n in self._ray.nodes() if n.get("Alive")]
        self.gpus = int(sum(r.get("GPU", 0) for r in nodes))
        cpus = [int(r.get("CPU", 0)) for r in nodes]
        if self.gpus:
            self.workers = min(self.gpus, max(1, sum(cpus)))
            self._cpus_per_task = 1
        else:
            if max(cpus, default=0) < self.threads:
                raise LrvizError(f"each Ray task needs {self.threads} CPUs (the threads of this process) but the largest machine of "
                                 f"the cluster has {max(cpus, default=0)}; use fewer threads per task (--ray-threads)")
            self.workers = sum(c // self.threads for c in cpus)
            self._cpus_per_task = self.threads

    def info(self) -> dict:
        """``backend, workers, threads, gpus, address``: what the JSON output and the store record."""
        return {"backend": self.backend, "workers": self.workers, "threads": self.threads, "gpus": self.gpus, "address": self.address}

    def map(self, job, items: Iterable, should_stop=None) -> Iterator[tuple[int, object]]:
        """Yield ``(i, job.prepare(device).run(items[i]))`` for every item, in the order they finish.

        ``job`` must be picklable and have a ``token`` (workers keep one prepared job, the last one).
        When ``should_stop()`` turns True, or the caller closes the generator, the tasks still
        pending are cancelled. A task's :class:`LrvizError` is raised here as the same one-line
        error; a worker that died is one :class:`LrvizError`; any other failure is re-raised."""
        ray = self._ray
        items = list(items)
        if not items:
            return
        ref = ray.put(job)
        fn = _remote(bool(self.gpus)).options(num_cpus=self._cpus_per_task)
        pending = {fn.remote(job.token, [ref], item, self.threads): i for i, item in enumerate(items)}
        try:
            while pending:
                if should_stop is not None and should_stop():
                    return
                done, _ = ray.wait(list(pending), num_returns=1, timeout=POLL_S)
                for r in done:
                    i = pending.pop(r)
                    yield i, self._get(r)
        finally:
            for r in pending:
                try:
                    ray.cancel(r)
                except Exception:  # already finished or gone: nothing to cancel
                    pass

    def _get(self, ref):
        ray = self._ray
        try:
            return ray.get(ref)
        except ray.exceptions.RayTaskError as e:
            cause = getattr(e, "cause", None)
            if isinstance(cause, LrvizError):
                raise LrvizError(str(cause)) from None
            raise
        except ray.exceptions.RayError as e:  # a worker died, ran out of memory, lost an object, ...
            raise LrvizError(f"a Ray task failed ({short_cause(e)})") from None

    def close(self) -> None:
        """Shut Ray down if :func:`ray_init` started or connected it (a Ray that was already up stays)."""
        global _started_here
        if _started_here and self._ray.is_initialized():
            self._ray.shutdown()
        _started_here = False
        _REMOTE.clear()

    def __enter__(self) -> "RayExecutor":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def backend_info(executor) -> dict:
    """``{"backend": ..., "workers": ...}`` (plus ``threads``, ``gpus``, ``address`` for Ray) of an
    executor, ``{"backend": "local", "workers": 1}`` for None (this process)."""
    if executor is None:
        return {"backend": "local", "workers": 1}
    return executor.info()


_env_lock = threading.Lock()
_env_executor: dict = {}


def executor_from_env() -> RayExecutor | None:
    """The executor the dashboard's "Measure sensitivities" passes to ``measure_sensitivity(...,
    executor=...)``: None when :data:`ADDRESS_ENV` is unset or empty (measure in this process), else
    one :class:`RayExecutor` per process for that address (``local`` = a local Ray), kept for later
    reruns; :data:`THREADS_ENV` sets its threads per task. Raises :class:`LrvizError` when the
    address is bad or unreachable, or Ray is not installed."""
    address = os.environ.get(ADDRESS_ENV, "").strip()
    if not address:
        return None
    raw = os.environ.get(THREADS_ENV, "").strip()
    if raw and not raw.isdigit():
        raise LrvizError(f"{THREADS_ENV} must be a positive integer; got {raw!r}")
    threads = int(raw) if raw else None
    with _env_lock:
        key = (check_address(address), threads)
        ex = _env_executor.get(key)
        if ex is None or not ex._ray.is_initialized():
            _env_executor.clear()
            ex = _env_executor[key] = RayExecutor(address, threads)
        return ex


def open_executor(address: str | None, threads: int | None = None) -> RayExecutor | None:
    """None for ``address=None`` (run here), else a :class:`RayExecutor` (``""`` or ``"local"``: a local
    Ray). What the command line's ``--ray [ADDRESS]`` and ``--ray-threads`` give."""
    if address is None:
        return None
    return RayExecutor(address, threads)
