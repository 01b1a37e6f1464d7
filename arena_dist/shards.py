"""Exactly-once shard scheduling on Ray actors: the driver hands out shards, commits each result once, requeues.

Shared by the label stage (teachers score shards) and the generate stage (generator models answer shards' prompts).
Hand-written because exactly-once needs three things Ray Data's streaming executor does not expose: shard-level
ownership (one input shard = one unit of work committed as a whole), a per-shard commit hook that runs once after the
whole shard is done and that a rerun can check, and control over what happens when an actor dies (here its shards go
back to the queue and the next free actor takes them). See arena_dist.label.driver for the full argument.

How it runs:
- Shards already committed (`is_committed`) are skipped. Up to `num_actors` actors are started (`start_actor`), no
  more than there are shards left; each must answer `info.remote()` with its `pid` once loaded.
- Every live actor has up to `inflight_per_actor` shards queued (`submit` sends one), so it never idles while the
  driver commits. Results come back to the driver, the ONLY writer: `commit(shard, result)` runs exactly once per
  shard. A "zombie" actor that finishes after being given up on cannot write anything, so nothing is doubled.
- An actor that dies (`RayActorError`) has its in-flight shards put back at the front of the queue; Ray restarts it
  (`max_restarts`) while the other actors carry on. A shard lost more than `max_shard_attempts` times, an ordinary
  Python error inside the work (bad data: retrying cannot help) or every actor dead stops the run loudly.
- One death is one failure. After a death the driver pings the actor (`info`) until it answers; while Ray is still
  restarting it, a call fails at once with `ActorUnavailableError` ("the actor is restarting", with
  `max_task_retries=0`), which is not another death: the ping is sent again after a backoff (0.05 s doubling to 1 s)
  and counts nothing. Counting those answers as failures used up an actor's restarts in a few pings (4 SIGKILLs
  were counted as 12-17 failures with 32 actors on 2 cores). Only a ping that finds the actor dead for good
  (`ActorDiedError`) counts, so a death while it reloads is counted by Ray's own `max_restarts`, not by the driver.
"""

from __future__ import annotations

import contextlib
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, Sequence

from arena_dist.errors import ArenaDistError


class ShardRunError(ArenaDistError):
    """The run could not finish (actors all dead, a shard failing repeatedly, an error inside the work)."""


class Shard(Protocol):
    index: int
    rows: int
    path: object  # the input file, named in errors

    @property
    def name(self) -> str: ...


class SchedulingSettings(Protocol):
    num_actors: int
    max_restarts: int
    max_shard_attempts: int
    inflight_per_actor: int


@dataclass
class ActorSlot:
    index: int
    handle: object
    pid: int | None = None
    ready: bool = False
    dead: bool = False
    failures: int = 0
    inflight: dict = field(default_factory=dict)  # ObjectRef -> shard
    ping_backoff: float = 0.0  # seconds before the next ping while Ray restarts the actor (0: not restarting)


@dataclass
class ShardRun:
    """What a run did; `first_ready` is when the first actor finished loading (throughput is measured from there)."""

    shards_total: int
    shards_skipped: int = 0
    shards_done: int = 0
    retries: int = 0
    actor_failures: int = 0
    pings_while_restarting: int = 0
    started: float = field(default_factory=time.monotonic)
    first_ready: float | None = None

    def counts(self) -> dict:
        return {"shards_total": self.shards_total, "shards_skipped": self.shards_skipped,
                "retries": self.retries, "actor_failures": self.actor_failures,
                "pings_while_restarting": self.pings_while_restarting}


def run_shards(
    what: str,
    shards: Sequence[Shard],
    settings: SchedulingSettings,
    *,
    is_committed: Callable[[Any], bool],
    start_actor: Callable[[], object],
    submit: Callable[[object, Any], object],
    commit: Callable[[Any, Any], None],
    on_skipped: Callable[[Any], None] | None = None,
    on_retry: Callable[[Any], None] | None = None,
    on_dispatch: Callable[[ActorSlot, Any], None] | None = None,
    on_loading: Callable[[], None] | None = None,
    error: type[ShardRunError] = ShardRunError,
) -> ShardRun:
    """Run `submit(actor, shard)` for every uncommitted shard on Ray actors and `commit(shard, result)` each result
    exactly once (in the driver). `what` names the run in errors. Ray must be initialised."""
    import ray
    from ray.exceptions import ActorUnavailableError, RayActorError, RayTaskError

    run = ShardRun(len(shards))
    pending: deque = deque()
    for shard in shards:
        if is_committed(shard):
            run.shards_skipped += 1
            if on_skipped is not None:
                on_skipped(shard)
        else:
            pending.append(shard)
    if not pending:
        return run

    slots = [ActorSlot(i, start_actor()) for i in range(min(settings.num_actors, len(pending)))]
    ready_refs = {slot.handle.info.remote(): slot for slot in slots}
    repings: list[tuple[float, ActorSlot]] = []  # (when, slot): actors Ray is still restarting
    attempts: dict[int, int] = {}
    last_error = ""
    if on_loading is not None:
        on_loading()
    try:
        while pending or any(slot.inflight for slot in slots):
            for slot in slots:  # keep every live actor's queue full
                while slot.ready and not slot.dead and pending and len(slot.inflight) < settings.inflight_per_actor:
                    shard = pending.popleft()
                    slot.inflight[submit(slot.handle, shard)] = shard
                    if on_dispatch is not None:
                        on_dispatch(slot, shard)
            if all(slot.dead for slot in slots):
                raise error(f"{what}: every actor died; last error: {last_error}")
            now = time.monotonic()
            for due, slot in [entry for entry in repings if entry[0] <= now]:
                repings.remove((due, slot))
                ready_refs[slot.handle.info.remote()] = slot
            waiting = list(ready_refs) + [ref for slot in slots for ref in slot.inflight]
            timeout = min([2.0, *(max(0.0, due - now) for due, _ in repings)])
            if not waiting:  # only actors waiting for their next ping
                time.sleep(timeout)
                continue
            done_refs, _ = ray.wait(waiting, num_returns=1, timeout=timeout)
            for ref in done_refs:
                if ref in ready_refs:
                    slot = ready_refs.pop(ref)
                    try:
                        info = ray.get(ref)
                    except ActorUnavailableError as exc:  # still restarting: not a new death, ask again later
                        last_error = one_line(exc)
                        run.pings_while_restarting += 1
                        slot.ping_backoff = min(1.0, max(0.05, slot.ping_backoff * 2))
                        repings.append((time.monotonic() + slot.ping_backoff, slot))
                        continue
                    except RayActorError as exc:
                        last_error = one_line(exc)
                        _actor_failed(slot, settings, ready_refs, run)
                        continue
                    slot.pid, slot.ready, slot.ping_backoff = info["pid"], True, 0.0
                    run.first_ready = run.first_ready or time.monotonic()
                    continue
                slot = next(s for s in slots if ref in s.inflight)
                shard = slot.inflight.pop(ref)
                try:
                    result = ray.get(ref)
                except RayActorError as exc:
                    last_error = one_line(exc)
                    # Every shard queued at the dead actor is lost with it: back to the front of the queue.
                    lost = [shard, *slot.inflight.values()]
                    slot.inflight.clear()
                    for lost_shard in reversed(lost):
                        attempts[lost_shard.index] = attempts.get(lost_shard.index, 0) + 1
                        if attempts[lost_shard.index] >= settings.max_shard_attempts:
                            raise error(
                                f"{what}: shard {lost_shard.name} lost its actor "
                                f"{attempts[lost_shard.index]} times; last error: {last_error}"
                            ) from None
                        pending.appendleft(lost_shard)
                        run.retries += 1
                        if on_retry is not None:
                            on_retry(lost_shard)
                    _actor_failed(slot, settings, ready_refs, run)
                    continue
                except RayTaskError as exc:
                    raise error(f"{what}: {shard.path} failed: {one_line(exc)}") from None
                commit(shard, result)
                run.shards_done += 1
    finally:
        for slot in slots:
            with contextlib.suppress(Exception):  # already gone
                ray.kill(slot.handle, no_restart=True)
    return run


def _actor_failed(slot: ActorSlot, settings: SchedulingSettings, ready_refs: dict, run: ShardRun) -> None:
    """Count one death and ping the actor (answered once Ray has restarted it) unless the restarts are used up."""
    slot.ready = False
    slot.failures += 1
    run.actor_failures += 1
    slot.dead = slot.failures > settings.max_restarts  # failures only grow: a dead slot stays dead
    if not slot.dead:
        ready_refs[slot.handle.info.remote()] = slot


def one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return " ".join(line.strip() for line in text[:3])[:500] if text else type(exc).__name__
