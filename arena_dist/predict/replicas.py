"""One model replica per device: a `Scorer` whose rows are scored by worker processes, each holding its own copy of
the members, which predict's planner cannot tell from the in-process scorer.

Each worker builds `factory(*factory_args)` once (the spawn start method: a fresh interpreter, no CUDA state copied
from the parent). On a GPU machine replica i sees only device i (`CUDA_VISIBLE_DEVICES` is set in its environment
when it is started, so before anything in it imports torch); on CPU each replica gets its own share of the cores as
torch threads. `score(member, sequences)` splits the rows so that each replica gets an equal share of tokens (not of
rows: one long-context row costs as much as many short ones), each replica scores its share in the label stage's
length-sorted token-budget batches, and the probabilities are joined back by position. `encode` is split the same
way by rows (tokenisation runs where the tokenizers are: the pool cannot build them from opaque factory arguments).

A replica that dies (killed, out of host memory) loses no rows: its share is split again over the replicas still
alive, which already hold the model. It is not restarted: a restart reloads the model (minutes of a notebook's time
limit for a multi-billion-parameter member), and a replica killed by a share too big for its memory would die
again on the same rows. An exception inside a replica (bad rows, a CUDA out-of-memory on one batch) is not a death:
it is raised here as it was raised there, since an identical replica would fail the same way.

Why hand-written: `concurrent.futures.ProcessPoolExecutor` marks the whole pool broken when one worker dies and
drops the work in flight; `multiprocessing.Pool` replaces a dead worker but never reports or reruns its task; neither
pins a worker to a device. Ray actors would (the label stage's are already one per GPU, each scoring whole input
shards, with the label store's per-shard commits as their recovery), but predict runs in an offline competition
notebook, where starting a Ray head costs time and memory for what a few pipes do here.
"""

from __future__ import annotations

import contextlib
import heapq
import os
import pickle
import signal
import sys
import time
import traceback
import weakref
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from arena_dist.errors import ArenaDistError, ConfigError
from arena_dist.worker_env import patched_environment

CLOSE_GRACE_S = 10.0  # how long close() waits for idle workers to exit before terminating them


class ReplicasLost(ArenaDistError, RuntimeError):
    """Every replica died: nothing is left to score the remaining rows."""


class RemoteTraceback(Exception):
    """The traceback of an exception raised inside a replica (attached as the re-raised exception's cause)."""

    def __str__(self) -> str:
        return "\n" + self.args[0]


def split_by_tokens(weights: Sequence[int], parts: int) -> list[list[int]]:
    """Positions 0..n-1 in `parts` groups of nearly equal total weight (each group's positions ascending).

    Longest first, each to the currently lightest group (LPT scheduling): the heaviest group ends at most one row
    heavier than the lightest, and every group gets rows of every length, so their padding stays alike too.
    """
    if parts <= 0:
        raise ValueError(f"parts must be > 0, got {parts}")
    groups: list[list[int]] = [[] for _ in range(parts)]
    heap = [(0, part) for part in range(parts)]  # (total weight, group), ties by group index: deterministic
    for position in sorted(range(len(weights)), key=lambda i: (-weights[i], i)):
        total, part = heapq.heappop(heap)
        groups[part].append(position)
        heapq.heappush(heap, (total + weights[position], part))
    return [sorted(group) for group in groups]


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def visible_gpus() -> list[str]:
    """The CUDA devices this process may use, as `CUDA_VISIBLE_DEVICES` entries (none on a CPU machine)."""
    import torch

    count = torch.cuda.device_count()
    if count == 0:
        return []
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is None:
        return [str(i) for i in range(count)]
    return [entry.strip() for entry in listed.split(",") if entry.strip()][:count]


def replica_environment(index: int, devices: Sequence[str], threads: int) -> dict[str, str]:
    """What replica `index` finds in its environment from its first instruction on."""
    env = {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    if devices:
        env["CUDA_VISIBLE_DEVICES"] = devices[index]
    return env


def _failure(exc: BaseException) -> tuple[BaseException, str]:
    """An exception as it can travel through a pipe: itself when it pickles, else a RuntimeError saying what it was."""
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    try:
        pickle.loads(pickle.dumps(exc))
    except Exception:
        exc = RuntimeError(f"{type(exc).__name__}: {exc}")
    return exc, text


def serve(conn, factory: Callable, factory_args: tuple, threads: int) -> None:
    """A replica's life: build the scorer once, then run the parent's calls until told to close (or the parent is
    gone)."""
    started = time.perf_counter()
    try:
        import torch

        torch.set_num_threads(threads)
        scorer = factory(*factory_args)
        members = scorer.num_members()
        info = {"pid": os.getpid(), "device": os.environ.get("CUDA_VISIBLE_DEVICES"),
                "threads": torch.get_num_threads(), "num_members": members,
                "num_labels": [scorer.num_labels(m) for m in range(members)],
                "load_seconds": round(time.perf_counter() - started, 3)}
    except Exception as exc:
        conn.send(("failed", *_failure(exc)))
        return
    try:
        conn.send(("ready", info))
        while True:
            try:
                message = conn.recv()
            except EOFError:  # the parent is gone: nobody to answer
                return
            if message[0] == "close":
                return
            _, method, args = message
            began, cpu_began = time.perf_counter(), time.process_time()
            try:
                result = getattr(scorer, method)(*args)
            except Exception as exc:
                conn.send(("failed", *_failure(exc)))
            else:
                conn.send(("done", result, time.perf_counter() - began, time.process_time() - cpu_began))
    except (BrokenPipeError, ConnectionResetError):  # the parent is gone mid-answer
        return
    finally:
        scorer.close()


@dataclass(eq=False)
class Replica:
    index: int
    process: Any  # multiprocessing Process
    conn: Any  # the parent's end of the pipe
    device: str | None
    info: dict = field(default_factory=dict)
    alive: bool = True

    @property
    def pid(self) -> int:
        return self.process.pid


def describe_exit(code: int | None) -> str:
    if code is None:
        return "its pipe broke"
    if code < 0:
        name = signal.Signals(-code).name
        return f"killed by {name}" + (" - out of host memory?" if -code == signal.SIGKILL else "")
    return f"exit status {code}"


def stop_replicas(replicas: list[Replica], grace_s: float) -> None:
    """Ask every worker to exit, wait up to `grace_s`, then terminate, then kill; reap them all (no zombies left)."""
    for replica in replicas:
        if replica.alive:
            with contextlib.suppress(OSError):
                replica.conn.send(("close",))
    deadline = time.monotonic() + grace_s
    for replica in replicas:
        replica.process.join(max(0.0, deadline - time.monotonic()))
        for stop in (replica.process.terminate, replica.process.kill):
            if replica.process.exitcode is not None:
                break
            stop()
            replica.process.join(5.0)
        replica.alive = False
        replica.conn.close()


class ReplicaPool:
    """`replicas` worker processes, each with its own `factory(*factory_args)` scorer (see the module docstring).

    `factory` must be picklable (a module-level function) and so must its arguments. `threads_per_replica`: torch
    threads in each worker (default: this machine's cores shared out). `devices`: the GPUs to put one replica on each
    (default: the visible ones; none on CPU). Use as a context manager, or call `close()`.
    """

    def __init__(self, factory: Callable, factory_args: Sequence = (), replicas: int = 2,
                 threads_per_replica: int | None = None, *, devices: Sequence[str] | None = None):
        import multiprocessing

        if replicas < 1:
            raise ConfigError(f"replicas must be >= 1, got {replicas}")
        devices = list(visible_gpus() if devices is None else devices)
        if devices and replicas > len(devices):
            raise ConfigError(f"replicas: {replicas} replicas but {len(devices)} GPU(s) ({','.join(devices)}): one "
                              "replica per device")
        threads = threads_per_replica or max(1, usable_cores() // replicas)
        context = multiprocessing.get_context("spawn")
        self._replicas: list[Replica] = []
        self._finalizer = weakref.finalize(self, stop_replicas, self._replicas, CLOSE_GRACE_S)
        # Per share of the latest call: replica, pid, rows, tokens (weights), seconds and cpu_seconds inside it.
        self.last_shares: list[dict] = []
        started = time.perf_counter()
        try:
            for index in range(replicas):
                parent_end, child_end = context.Pipe()
                # daemon: multiprocessing ends it when this interpreter exits, even if close() was never called
                # (a daemon may not start processes of its own; scoring starts none).
                process = context.Process(target=serve, args=(child_end, factory, tuple(factory_args), threads),
                                          name=f"replica-{index}", daemon=True)
                with patched_environment(replica_environment(index, devices, threads)):
                    process.start()
                child_end.close()  # the child's death must read as EOF here
                self._replicas.append(Replica(index, process, parent_end, devices[index] if devices else None))
            self._await_ready()
        except BaseException:
            self.close(grace_s=0.0)
            raise
        info = self._alive()[0].info
        self._num_labels: list[int] = info["num_labels"]
        print(f"replicas: {len(self._alive())} ready in {time.perf_counter() - started:.1f} s "
              f"(pids {', '.join(str(r.pid) for r in self._alive())}; "
              f"{'devices ' + ','.join(devices[:replicas]) if devices else 'CPU'}; {threads} threads each)",
              flush=True)

    # -- the Scorer protocol ------------------------------------------------------------------------------------

    def num_members(self) -> int:
        return len(self._num_labels)

    def num_labels(self, member: int) -> int:
        return self._num_labels[member]

    def encode(self, member: int, records: Sequence[dict], swap: bool) -> list[list[int]]:
        encoded: list[list[int] | None] = [None] * len(records)
        for positions, rows in self._map("encode", member, records, [1] * len(records), swap):
            for position, row in zip(positions, rows):
                encoded[position] = row
        return encoded  # type: ignore[return-value]

    def score(self, member: int, sequences: Sequence[Sequence[int]]) -> tuple[np.ndarray, Any]:
        probs = np.empty((len(sequences), self.num_labels(member)), dtype=np.float64)
        total = None
        for positions, (share_probs, stats) in self._map("score", member, sequences, [len(s) for s in sequences]):
            probs[positions] = share_probs
            total = stats if total is None else total + stats
        return probs, total

    def close(self, grace_s: float = CLOSE_GRACE_S) -> None:
        """End every worker (idempotent). `grace_s`: how long idle workers get to exit on their own."""
        if self._finalizer.detach() is not None:
            stop_replicas(self._replicas, grace_s)

    def __enter__(self) -> "ReplicaPool":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close(grace_s=CLOSE_GRACE_S if exc_info[0] is None else 0.0)

    @property
    def pids(self) -> list[int]:
        """The process ids of the replicas alive (as far as this pool knows)."""
        return [replica.pid for replica in self._alive()]

    @property
    def replica_info(self) -> list[dict]:
        """What each replica alive reported when ready: pid, device, threads, load_seconds, members."""
        return [dict(replica.info) for replica in self._alive()]

    # -- workers ------------------------------------------------------------------------------------------------

    def _alive(self) -> list[Replica]:
        return [replica for replica in self._replicas if replica.alive]

    def _lost(self, replica: Replica, rows: int = 0) -> None:
        replica.alive = False
        replica.process.join(1.0)
        how = describe_exit(replica.process.exitcode)
        if replica.process.exitcode is None:  # a broken pipe from a process still running: end it
            replica.process.kill()
            replica.process.join()
        left = len(self._alive())
        where = f", device {replica.device}" if replica.device is not None else ""
        print(f"replicas: replica {replica.index} (pid {replica.pid}{where}) died ({how}); "
              + (f"its {rows} rows go to the {left} replica(s) left" if rows and left else f"{left} replica(s) left"),
              file=sys.stderr, flush=True)

    def _receive(self, waiting: Sequence[Replica]) -> list[tuple[Replica, tuple | None]]:
        """Blocks until at least one of `waiting` answers or dies: [(replica, message, or None for a death)]."""
        from multiprocessing.connection import wait

        handles = {}
        for replica in waiting:
            handles[replica.conn] = replica
            handles[replica.process.sentinel] = replica
        events = []
        for replica in dict.fromkeys(handles[ready] for ready in wait(list(handles))):
            try:
                # A replica may have answered and then died: its answer still counts.
                events.append((replica, replica.conn.recv() if replica.conn.poll() else None))
            except (EOFError, OSError):
                events.append((replica, None))
        return events

    def _await_ready(self) -> None:
        starting = list(self._replicas)
        failure = None
        while starting:
            for replica, message in self._receive(starting):
                starting.remove(replica)
                if message is None:
                    self._lost(replica)
                elif message[0] == "ready":
                    replica.info = message[1]
                else:
                    failure = failure or message
        if failure is not None:
            _, exc, text = failure
            raise exc from RemoteTraceback(text)
        alive = self._alive()
        if not alive:
            raise ReplicasLost(f"no replica started: all {len(self._replicas)} died while building their scorers "
                               f"({self._exits()})")
        layouts = {(tuple(r.info["num_labels"])) for r in alive}
        if len(layouts) > 1:
            raise RuntimeError(f"the replicas built different members (labels per member: {sorted(layouts)})")

    def _exits(self) -> str:
        return "; ".join(f"replica {r.index}: {describe_exit(r.process.exitcode)}" for r in self._replicas
                         if not r.alive)

    # -- one call over all replicas -----------------------------------------------------------------------------

    def _map(self, method: str, member: int, items: Sequence, weights: Sequence[int], *extra) -> list[tuple]:
        """`method(member, share, *extra)` on the replicas, each share of `items` of equal total weight ->
        [(positions, result)], every position in exactly one share. A dead replica's share is split over the others.
        """
        if not self._finalizer.alive:
            raise RuntimeError("this replica pool is closed")
        if not self._alive():
            raise ReplicasLost(f"no replica left ({self._exits()})")
        shares = [s for s in split_by_tokens(weights, len(self._alive())) if s] or [[]]
        pending: deque[list[int]] = deque(shares)
        running: dict[Replica, list[int]] = {}
        results: list[tuple[list[int], Any]] = []
        self.last_shares = []
        failure = None
        try:
            while pending or running:
                if failure is None:
                    self._dispatch(method, member, items, extra, pending, running, weights)
                if not running:
                    if pending:
                        raise ReplicasLost(f"every replica died; {sum(map(len, pending))} of {len(items)} rows are "
                                           f"not scored ({self._exits()}). Fewer replicas or a smaller token budget "
                                           "per batch need less memory.")
                    break
                # Each replica has at most this one call outstanding (every call drains them all, even when one
                # fails), so whatever it sends now answers it.
                for replica, message in self._receive(list(running)):
                    positions = running.pop(replica)
                    if message is None:
                        self._lost(replica, len(positions))
                        if failure is None and positions:
                            parts = max(1, len(self._alive()))
                            share_weights = [weights[i] for i in positions]
                            pending.extend([positions[j] for j in part]
                                           for part in split_by_tokens(share_weights, parts) if part)
                    elif message[0] == "failed":
                        failure = failure or (message[1], self._where(replica, positions) + message[2])
                    else:
                        results.append((positions, message[1]))
                        self.last_shares.append({"replica": replica.index, "pid": replica.pid,
                                                 "rows": len(positions),
                                                 "tokens": int(sum(weights[i] for i in positions)),
                                                 "seconds": round(message[2], 4),
                                                 "cpu_seconds": round(message[3], 4)})
        except BaseException:
            # Interrupted with workers mid-call (Ctrl-C, a lost pool): they cannot be reused in a known state.
            self.close(grace_s=0.0)
            raise
        if failure is not None:  # raised only now: every other replica has finished its share (none is mid-call)
            exc, text = failure
            raise exc from RemoteTraceback(text)
        covered = np.zeros(len(items), dtype=np.int64)
        for positions, _ in results:
            np.add.at(covered, positions, 1)
        if len(items) and not (covered == 1).all():
            raise RuntimeError(f"replica shares did not cover each row once ({int((covered != 1).sum())} rows off)")
        return results

    @staticmethod
    def _where(replica: Replica, positions: list[int]) -> str:
        """Row numbers in a replica's error count within its share: which rows of the call those are."""
        preview = positions if len(positions) <= 20 else [*positions[:20], "..."]
        return (f"replica {replica.index} (pid {replica.pid}), on a share of {len(positions)} rows: its row k is row "
                f"{preview}[k] of this call\n")

    def _dispatch(self, method, member, items, extra, pending, running, weights) -> None:
        """Hands pending shares to idle live replicas; one found dead on sending gives its share back."""
        for replica in self._alive():
            if not pending:
                return
            if replica in running:
                continue
            positions = pending.popleft()
            try:
                replica.conn.send(("call", method, (member, [items[i] for i in positions], *extra)))
            except (BrokenPipeError, ConnectionResetError, EOFError):
                self._lost(replica, len(positions))
                survivors = max(1, len(self._alive()))
                pending.extendleft([positions[j] for j in part] for part in
                                   split_by_tokens([weights[i] for i in positions], survivors) if part)
                continue
            running[replica] = positions
