"""Where the triage tasks run: a local pool of long-lived worker processes, or a Dask cluster.

Both stream records back as tasks finish, and both treat a worker that dies mid-task the same
way: the task is retried once on a fresh worker; a second loss makes the PR "not audited:
worker lost" (a submission that crashes the auditor twice is not waved through, nor does it
stop the other PRs).

- `LocalPool`: one process per worker, started once (`spawn`), so golf-audit, LibCST and the
  rules are imported once per worker, not per PR. Each worker has its own pipe, so the pool
  always knows which task a dead worker was running.
- `DaskRunner`: a `distributed.Client` on a scheduler address, or on a `LocalCluster` it starts
  (processes, one thread per worker). Tasks are submitted in a window (a few per worker) and
  collected with `as_completed`; the scheduler's own retries are set to none on a LocalCluster
  (`distributed.scheduler.allowed-failures: 0`), so a dead worker gives `KilledWorker` at once
  and the retry-once rule above is ours. A worker that dies fails every task the scheduler had
  sent it, so a retry runs alone on the cluster: its second loss is its own, not a neighbour's.
  An external scheduler keeps its own setting (see docs/triage.md)."""
from __future__ import annotations

import multiprocessing as mp
import os
import time
import traceback
import uuid
from collections import deque
from multiprocessing.connection import wait
from typing import Any, Callable, Iterable, Iterator

from harness.triage.work import audit_task, base_record, verdict_of

WORKER_LOST = "worker lost"


class ClusterError(Exception):
    """The Dask cluster cannot be used: distributed not installed, scheduler unreachable."""
MAX_ATTEMPTS = 2  # the first run and one retry


def lost_record(task: dict[str, Any], attempts: int, detail: str = "") -> dict[str, Any]:
    rec = base_record(task)
    rec["not_audited"].append(f"not audited: {WORKER_LOST} (the worker died while auditing this PR, "
                              f"{attempts} times){': ' + detail if detail else ''}")
    rec["attempts"] = attempts
    rec["transient"] = True
    rec["verdict"] = verdict_of(rec)
    return rec


def _failed_record(task: dict[str, Any], reason: str, attempts: int) -> dict[str, Any]:
    """A PR whose audit did not complete: not audited, and worth another try on a re-run."""
    rec = base_record(task)
    rec["not_audited"].append(reason)
    rec["attempts"] = attempts
    rec["transient"] = True
    rec["verdict"] = verdict_of(rec)
    return rec


def timeout_record(task: dict[str, Any], seconds: float, attempts: int) -> dict[str, Any]:
    return _failed_record(task, f"not audited: the audit did not finish in {seconds:.0f} s (the worker was stopped)",
                          attempts)


def error_record(task: dict[str, Any], message: str, attempts: int = 1) -> dict[str, Any]:
    return _failed_record(task, f"internal error: {message}", attempts)


class _Feed:
    """Tasks pulled lazily from an iterable (the folder's bytes are read only when a worker is
    free), with retries served first."""

    def __init__(self, tasks: Iterable[dict]):
        self._it = iter(tasks)
        self._retries: deque[tuple[dict, int]] = deque()
        self._next: tuple[dict, int] | None = None

    def __bool__(self) -> bool:
        if self._retries or self._next is not None:
            return True
        nxt = next(self._it, None)
        if nxt is None:
            return False
        self._next = (nxt, 1)
        return True

    def popleft(self) -> tuple[dict, int]:
        if self._retries:
            return self._retries.popleft()
        if self._next is None and not self:
            raise IndexError("no task left")
        item, self._next = self._next, None
        return item  # type: ignore[return-value]

    def appendleft(self, item: tuple[dict, int]) -> None:
        self._retries.appendleft(item)

    def retry_next(self) -> bool:
        """The next task served is a retry."""
        return bool(self._retries)


# ------------------------------------------------------------------ local pool
def _worker_main(conn, fn: Callable[[dict], dict]) -> None:
    """A pool worker: import what an audit needs, say "ready", then audit tasks from the pipe
    until told to stop (None). A task's time (and its timeout) starts warm."""
    try:
        import harness.audit  # noqa: F401
        import harness.evaluation.claims  # noqa: F401
        import harness.static.audit  # noqa: F401
        from harness.core.registry import all_rules

        all_rules()
        conn.send("ready")
    except (OSError, ValueError):
        return
    while True:
        try:
            task = conn.recv()
        except (EOFError, OSError):
            return
        if task is None:
            return
        try:
            out = fn(task)
        except KeyboardInterrupt:  # Ctrl-C reaches the whole process group: the parent decides
            return
        except BaseException as exc:  # noqa: BLE001 - reported, the worker lives on
            out = error_record(task, f"{type(exc).__name__}: {exc}")
            out["detail"] = traceback.format_exc()[-4000:]
        try:
            conn.send(out)
        except (OSError, ValueError):
            return


class _Worker:
    def __init__(self, ctx, fn):
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_worker_main, args=(child, fn), daemon=True)
        self.proc.start()
        child.close()
        self.task: dict | None = None
        self.attempt = 0
        self.started = 0.0

    def wait_ready(self, timeout: float = 600) -> None:
        try:
            if self.conn.poll(timeout) and self.conn.recv() == "ready":
                return
        except (EOFError, OSError):
            pass
        raise RuntimeError(f"a triage worker did not start (exit code {self.proc.exitcode})")


class LocalPool:
    """`workers` long-lived processes; `run(tasks)` yields (task, record) as they finish."""

    name = "local"

    def __init__(self, workers: int, fn: Callable[[dict], dict] = audit_task, task_timeout: float | None = None):
        self.workers = max(1, workers)
        self.fn = fn
        self.task_timeout = task_timeout  # a task running longer is killed: "not audited: timed out"
        self._ctx = mp.get_context("spawn")
        self._pool: list[_Worker] = []

    def describe(self) -> str:
        return f"local pool, {self.workers} worker process(es)"

    def run(self, tasks: Iterable[dict]) -> Iterator[tuple[dict, dict]]:
        queue = _Feed(tasks)
        try:
            if queue:  # start the workers together, each importing once
                fresh = [_Worker(self._ctx, self.fn) for _ in range(self.workers - len(self._pool))]
                self._pool.extend(fresh)
                for w in fresh:
                    w.wait_ready()
            while queue or any(w.task is not None for w in self._pool):
                while (len(self._pool) < self.workers or any(w.task is None for w in self._pool)) and queue:
                    idle = next((w for w in self._pool if w.task is None), None)
                    if idle is None:  # a replacement for a worker that died
                        idle = _Worker(self._ctx, self.fn)
                        self._pool.append(idle)
                        idle.wait_ready()
                    task, attempt = queue.popleft()
                    try:
                        idle.conn.send(task)
                    except (OSError, ValueError):  # died while idle: replace it, keep the task
                        self._replace(idle)
                        queue.appendleft((task, attempt))
                        continue
                    idle.task, idle.attempt, idle.started = task, attempt, time.monotonic()
                busy = [w for w in self._pool if w.task is not None]
                limit = None
                if self.task_timeout:
                    limit = max(0.0, min(w.started for w in busy) + self.task_timeout - time.monotonic())
                ready = wait([w.conn for w in busy] + [w.proc.sentinel for w in busy], timeout=limit)
                for w in busy:
                    if self.task_timeout and w.conn not in ready and w.proc.sentinel not in ready \
                            and time.monotonic() - w.started >= self.task_timeout:
                        task = w.task
                        self._replace(w)
                        yield task, timeout_record(task, self.task_timeout, w.attempt)  # type: ignore[arg-type]
                        continue
                    if w.conn in ready or w.proc.sentinel in ready:
                        got = self._collect(w)
                        task, attempt = w.task, w.attempt
                        w.task = None
                        if got is not None:
                            got["attempts"] = attempt
                            yield task, got
                        else:
                            code = w.proc.exitcode
                            self._replace(w)
                            if attempt < MAX_ATTEMPTS:
                                queue.appendleft((task, attempt + 1))
                            else:
                                yield task, lost_record(task, attempt, f"exit code {code}")
        finally:
            self.close()

    def _collect(self, w: _Worker) -> dict | None:
        try:
            if w.conn.poll():
                return w.conn.recv()
        except (EOFError, OSError):
            pass
        if w.proc.is_alive():  # the sentinel fired late; the answer may still come
            try:
                if w.conn.poll(5):
                    return w.conn.recv()
            except (EOFError, OSError):
                pass
        return None

    def _replace(self, w: _Worker) -> None:
        try:
            w.proc.kill()
            w.proc.join(5)
        except (OSError, ValueError):
            pass
        w.conn.close()
        self._pool.remove(w)

    def close(self) -> None:
        for w in list(self._pool):
            try:
                w.conn.send(None)
            except (OSError, ValueError):
                pass
        for w in list(self._pool):
            w.proc.join(5)
            if w.proc.is_alive():
                w.proc.kill()
                w.proc.join(5)
            w.conn.close()
        self._pool.clear()


# ------------------------------------------------------------------ Dask
class DaskRunner:
    """Tasks on a Dask cluster: `address` of a running scheduler (tcp://host:8786), or None to
    start a LocalCluster of `workers` processes with one thread each."""

    name = "dask"

    def __init__(self, address: str | None, workers: int = 2, fn: Callable[[dict], dict] = audit_task,
                 window_per_worker: int = 4, cluster_kwargs: dict | None = None):
        self.address = address
        self.workers = max(1, workers)
        self.fn = fn
        self.window_per_worker = window_per_worker
        self.cluster_kwargs = cluster_kwargs or {}
        self.client = None
        self.cluster = None

    def describe(self) -> str:
        if self.address:
            return f"Dask scheduler {self.address}"
        return f"Dask LocalCluster, {self.workers} worker process(es) x 1 thread"

    def start(self) -> None:
        try:
            import dask
            from distributed import Client, LocalCluster
        except ImportError as exc:
            raise ClusterError(f"dask[distributed] is not installed ({exc}): pip install 'golf-audit[triage]'") from None

        if self.client is not None:
            return
        if self.address:
            try:
                self.client = Client(self.address, timeout="30s")
            except (OSError, TimeoutError, ValueError) as exc:
                raise ClusterError(f"cannot reach the Dask scheduler at {self.address}: {exc}") from None
        else:
            with dask.config.set({"distributed.scheduler.allowed-failures": 0,
                                  "distributed.worker.daemon": False}):
                self.cluster = LocalCluster(n_workers=self.workers, threads_per_worker=1, processes=True,
                                            dashboard_address=":0", **self.cluster_kwargs)
            self.client = Client(self.cluster)

    def n_threads(self) -> int:
        try:
            return max(1, sum(self.client.nthreads().values()))  # type: ignore[union-attr]
        except Exception:  # noqa: BLE001
            return self.workers

    def run(self, tasks: Iterable[dict]) -> Iterator[tuple[dict, dict]]:
        from distributed import as_completed
        from distributed.scheduler import KilledWorker

        self.start()
        client = self.client
        pending = _Feed(tasks)
        meta: dict[str, tuple[dict, int]] = {}
        ac = as_completed()
        window = self.window_per_worker * self.n_threads()

        def put(task: dict, attempt: int) -> None:
            key = f"triage-pr{task['pr']}-a{attempt}-{uuid.uuid4().hex[:8]}"
            fut = client.submit(self.fn, task, key=key, pure=False, retries=0)
            meta[fut.key] = (task, attempt)
            ac.add(fut)

        def submit() -> None:
            # The scheduler sends a worker several tasks at once, and when it dies every one of
            # them gets KilledWorker, the bystanders too. So a retry waits for the cluster to
            # drain and runs alone: a loss then is its own.
            if any(attempt > 1 for _, attempt in meta.values()):
                return  # a retry in flight runs alone
            while pending and ac.count() < window:
                if pending.retry_next():
                    if ac.count() == 0:
                        put(*pending.popleft())
                    return
                put(*pending.popleft())

        submit()
        while not ac.is_empty() or pending:
            if ac.is_empty():
                submit()
                continue
            fut = next(ac)
            task, attempt = meta.pop(fut.key)
            try:
                rec = fut.result()
                rec["attempts"] = attempt
                out = rec
            except KilledWorker:
                if attempt < MAX_ATTEMPTS:
                    pending.appendleft((task, attempt + 1))
                    out = None
                else:
                    out = lost_record(task, attempt)
            except Exception as exc:  # noqa: BLE001 - a task error is this PR's, not the run's
                out = error_record(task, f"{type(exc).__name__}: {exc}", attempt)
            fut.release()
            submit()
            if out is not None:
                yield task, out

    def close(self) -> None:
        if self.client is not None:
            try:
                self.client.close(timeout=10)
            except Exception:  # noqa: BLE001
                pass
        if self.cluster is not None:
            try:
                self.cluster.close(timeout=10)
            except Exception:  # noqa: BLE001
                pass
        self.client = self.cluster = None


def wait_ready(runner, timeout: float = 60) -> None:
    """Block until a Dask runner has at least one worker."""
    if isinstance(runner, DaskRunner):
        runner.start()
        t0 = time.time()
        while not runner.client.nthreads() and time.time() - t0 < timeout:  # type: ignore[union-attr]
            time.sleep(0.2)
