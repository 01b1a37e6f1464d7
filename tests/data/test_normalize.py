"""SeenHashes: exact membership like a Python set, merged in place (no whole-set temporaries per flush)."""

import random
import tracemalloc

import numpy as np
import pytest

from arena_dist.data.normalize import SeenHashes


@pytest.mark.parametrize("buffer_size", [1, 7, 97, 4096])
def test_membership_equals_a_python_set_with_duplicates_across_flushes(buffer_size):
    rng = random.Random(buffer_size)
    # A small range makes a value come back after it was flushed into the array; the extremes of uint64 included.
    values = [rng.randrange(3000) * 0x9E3779B97F4A7C15 % 2**64 for _ in range(12000)] + [0, 2**64 - 1, 0, 2**64 - 1]
    seen, reference = SeenHashes(buffer_size=buffer_size), set()
    for step, value in enumerate(values):
        assert seen.add(value) == (value not in reference), step
        reference.add(value)
        if step % 997 == 0:
            merged = seen._sorted
            assert np.all(np.diff(merged) > 0)  # sorted, distinct
            assert {int(v) for v in merged} <= reference
    assert len(seen) == len(reference)
    assert all(value in seen for value in reference)
    assert sum(rng.getrandbits(64) in seen for _ in range(2000)) == 0  # absent values stay absent
    seen._flush()
    assert sorted(int(v) for v in seen._sorted) == sorted(reference)


def test_a_flush_allocates_no_whole_set_temporaries():
    """np.union1d copied the whole array several times per flush; the in-place merge only touches chunk-sized
    temporaries (the buffer is pre-grown here so the flush measured is not also a growth step)."""
    rng = np.random.default_rng(0)
    seen = SeenHashes(buffer_size=65536)
    seen.update(int(v) for v in rng.integers(0, 2**63, size=400_000, dtype=np.uint64))
    seen._flush()
    seen._buffer.resize(1_000_000, refcheck=False)
    set_bytes = seen._sorted.nbytes
    batch = [int(v) for v in rng.integers(2**63, 2**64 - 1, size=65535, dtype=np.uint64)]
    tracemalloc.start()
    try:
        seen.update(batch)
        tracemalloc.reset_peak()
        before = tracemalloc.get_traced_memory()[0]
        seen.add(2**64 - 1)  # the 65536th new value: one flush
        peak = tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()
    assert not seen._recent and seen._size == len(seen) > 450_000
    assert peak < set_bytes / 2, (peak, set_bytes)  # union1d: about 3x set_bytes
