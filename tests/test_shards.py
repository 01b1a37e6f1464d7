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


class SlowStart:
    """Takes 0.6 s to start, as a model load does: the driver's pings may reach it while Ray is restarting it."""

    def __init__(self):
        time.sleep(0.6)

    def info(self):
        return {"pid": os.getpid()}

    def work(self, index):
        time.sleep(0.05)
        return index


def run_with_three_kills():
    """600 shards on 3 actors; actor 0 is SIGKILLed three times, at its third shard after each (re)load (work only
    goes to a ready actor): as many kills as its restarts, so a single extra failure per kill would mark it dead."""
    import ray

    kills, committed, dispatched = [], [], {}

    def kill_actor_0(slot, shard):
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
    return run, kills, committed


def test_each_kill_costs_one_failure_while_the_actor_restarts_slowly(ray_cluster):
    # Whether a ping fails with ActorUnavailableError (Ray still restarting the actor) or waits for the restart
    # depends on how soon Ray notices the death: under load (the 32-actor fan-out of bench/scale.py) it happens every
    # run, on an idle machine rarely. So the run is repeated (at most 3 times) until one hits that window; every run
    # must count one failure per kill and commit every shard exactly once. If none hits it, the counting of those
    # pings went unexercised and the test says so by skipping after its other checks passed.
    hit = []
    for _ in range(3):
        run, kills, committed = run_with_three_kills()
        assert len(kills) == 3 and len(set(kills)) == 3  # three different processes of actor 0
        assert run.actor_failures == 3, run.counts()  # one per kill (before the fix: one per ping while restarting)
        assert sorted(committed) == list(range(600))  # every shard exactly once
        hit.append(run.pings_while_restarting)
        if run.pings_while_restarting >= 1:
            return
    pytest.skip(f"no ping reached an actor while Ray restarted it in {len(hit)} runs (one failure per kill and "
                "every shard once held in each): the ActorUnavailableError path went unexercised")
