"""The exactly-once shard scheduler on a real Ray cluster: one SIGKILL costs one failure, however long the restart."""

import os
import signal
import time
from dataclasses import dataclass

import pytest

from arena_dist.shards import run_shards

pytestmark = pytest.mark.slow


@dataclass
class Settings:
    num_actors: int = 3
    max_restarts: int = 3
    max_shard_attempts: int = 5
    inflight_per_actor: int = 2


@dataclass(frozen=True)
class Shard:
    index: int
    rows: int = 1
    path: str = "memory"

    @property
    def name(self) -> str:
        return f"shard-{self.index}"


def test_each_kill_costs_one_failure_while_the_actor_restarts_slowly(ray_cluster):
    import ray

    class SlowStart:
        """Takes 0.6 s to start, as a model load does: the driver's pings reach it while Ray is restarting it."""

        def __init__(self):
            time.sleep(0.6)

        def info(self):
            return {"pid": os.getpid()}

        def work(self, index):
            time.sleep(0.05)
            return index

    kills, committed, dispatched = [], [], {}

    def kill_actor_0(slot, shard):
        # Actor 0 is killed three times, at its third shard after each (re)load (work only goes to a ready actor):
        # as many kills as its restarts, so a single extra failure per kill would mark it dead.
        if slot.index != 0 or slot.pid in kills or len(kills) == 3:
            return
        dispatched[slot.pid] = dispatched.get(slot.pid, 0) + 1
        if dispatched[slot.pid] == 3:
            os.kill(slot.pid, signal.SIGKILL)
            kills.append(slot.pid)

    run = run_shards(
        "kill test", [Shard(i) for i in range(600)], Settings(), is_committed=lambda shard: False,
        start_actor=lambda: ray.remote(SlowStart).options(num_cpus=0.1, max_restarts=3,
                                                          max_task_retries=0).remote(),
        submit=lambda actor, shard: actor.work.remote(shard.index),
        commit=lambda shard, result: committed.append(result), on_dispatch=kill_actor_0,
    )
    assert len(kills) == 3 and len(set(kills)) == 3  # three different processes of actor 0
    assert run.actor_failures == 3, run.counts()  # one per kill (before the fix: one per ping while restarting)
    assert run.pings_while_restarting >= 1, run.counts()  # the restarting window was really hit
    assert sorted(committed) == list(range(600))  # every shard exactly once
