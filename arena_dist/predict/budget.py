"""Predict under a wall-clock budget: a complete submission first, then refinement on the most uncertain rows for as
long as the deadline allows, the submission rewritten after every step.

1. The first pass: member 0 scores every row in the direct order; then `publish` (the stage writes the submission
   atomically). From here on a valid submission is always on disk, whatever happens next.
2. The refinement passes, in the configured order. Each takes at most ceil(fraction x rows) rows, in chunks: a
   chunk is the not yet refined rows, most uncertain first by the current ensemble probabilities (recomputed before
   every chunk), as many as its time allows; after each chunk `publish` again.
3. Without a deadline every pass takes its whole share in one chunk. With one, a chunk gets 10% of the time left
   (2% for a member whose speed is not measured yet; at least 10 submission writes' time, at most 25% of what is
   left), so chunks shrink as the deadline nears and refinement ends close to it; it stops when not even one row's
   predicted time (plus a submission write) fits before `deadline - safety_margin`. The first pass always runs to
   the end: without it there is no submission.

The time of a chunk is predicted from tokens: seconds per token of its member, measured on everything that member
has scored so far (the first pass measures member 0), counting every row's tokens with member 0's encoding (the
first pass's lengths), so no member has to encode rows it may never score. A member's own tokenizer and speed both
end up in its rate. This is hand-written because the planning needs the project's own pieces (the scorer, the
ensemble's uncertainty, atomic submission writes); no scheduling library knows them.

`clock` is the time source (monotonic seconds; `deadline` is on the same clock), a seam for tests.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Callable, Sequence

import numpy as np

from arena_dist.predict.ensemble import Ensemble, most_uncertain_first

CHUNK_SHARE = 0.1  # of the time left per chunk: the last chunks shrink with it, so refinement ends near the deadline
PROBE_SHARE = 0.02  # the first chunk of a member whose speed is not measured yet
MIN_CHUNK_WRITES = 10  # a chunk lasts at least 10 submission writes: writes stay under ~10% of the refinement time
MAX_CHUNK_SHARE = 0.25  # ...but never more than this share of the time left: only a chunk 4x slower than predicted
#                         could then pass the deadline
FIRST_PASS_CHUNKS = 20  # progress lines (rows/s, ETA) of the first pass; each chunk keeps enough rows to batch well
FIRST_PASS_MIN_CHUNK_ROWS = 256


@dataclass(frozen=True)
class Pass:
    member: int
    swap: bool
    fraction: float = 1.0  # cap on the share of rows it may touch

    @property
    def name(self) -> str:
        return f"m{self.member}_{'swap' if self.swap else 'direct'}"


FIRST_PASS = Pass(0, False, 1.0)


@dataclass
class PassReport:
    name: str
    member: int
    swap: bool
    fraction: float
    planned_rows: int
    rows: int = 0
    chunks: int = 0
    seconds: float = 0.0  # scoring and submission writes
    predicted_seconds: float = 0.0  # what the plan expected for the same chunks (refinement passes)
    stopped: str = "not reached"  # complete | deadline | not reached


@dataclass
class ChunkReport:
    name: str
    rows: int
    tokens: int
    predicted_seconds: float
    seconds: float
    write_seconds: float


class CostModel:
    """Seconds per token of each member (tokens counted with member 0's encoding), from what it has scored."""

    def __init__(self):
        self.tokens: dict[int, float] = {}
        self.seconds: dict[int, float] = {}
        self.write_seconds = 0.0  # the longest submission write so far

    def observe(self, member: int, tokens: float, seconds: float) -> None:
        self.tokens[member] = self.tokens.get(member, 0.0) + tokens
        self.seconds[member] = self.seconds.get(member, 0.0) + seconds

    def measured(self, member: int) -> bool:
        return self.tokens.get(member, 0.0) > 0

    def seconds_per_token(self, member: int) -> float:
        """Member 0's rate until `member` has scored something."""
        known = member if self.measured(member) else 0
        return self.seconds[known] / self.tokens[known]


@dataclass
class Outcome:
    ensemble: Ensemble
    passes: list[PassReport]
    chunks: list[ChunkReport]
    padding: object  # the scorer's padding statistics, summed over every call
    first_pass_seconds: float
    refine_started: float  # clock time the first submission was written
    ended: float
    deadline: float | None
    safety_margin: float
    cost: CostModel

    def summary(self) -> dict:
        left = None if self.deadline is None else self.deadline - self.ended
        return {
            "first_pass_seconds": self.first_pass_seconds,
            "refine_seconds": self.ended - self.refine_started,
            "seconds_left_at_end": left,
            "passed_deadline": left is not None and left < 0,
            "safety_margin": self.safety_margin,
            "seconds_per_token": {f"m{m}": self.cost.seconds_per_token(m) for m in sorted(self.cost.tokens)},
            "submission_write_seconds": self.cost.write_seconds,
            "passes": [asdict(p) for p in self.passes],
            "chunks": [asdict(c) for c in self.chunks],
        }


def _add(total, stats):
    return stats if total is None else total + stats


class Planner:
    """One predict run's loop state: the ensemble so far, the cost model and the reports."""

    def __init__(self, scorer, records: Sequence[dict], weights: Sequence[float], num_classes: int, measure: str,
                 deadline: float | None, safety_margin: float, publish: Callable[[np.ndarray], None],
                 clock: Callable[[], float], log: Callable[[str], None]):
        self.scorer, self.records, self.measure = scorer, records, measure
        self.deadline, self.safety_margin = deadline, safety_margin
        self.publish_fn, self.clock, self.log = publish, clock, log
        self.ensemble = Ensemble(len(records), weights, num_classes)
        self.cost = CostModel()
        self.chunks: list[ChunkReport] = []
        self.padding = None
        self.lengths = np.zeros(len(records), dtype=np.int64)

    def score(self, member: int, swap: bool, rows: np.ndarray, sequences=None) -> None:
        """Score `rows` with one member in one order and record them (probabilities in the task's classes)."""
        from arena_dist.classes import to_classes
        from arena_dist.label.probs import swap_back

        if sequences is None:
            sequences = self.scorer.encode(member, [self.records[i] for i in rows], swap)
        probs, stats = self.scorer.score(member, sequences)
        self.padding = _add(self.padding, stats)
        probs = swap_back(probs) if swap else probs
        self.ensemble.record(member, swap, rows, to_classes(probs, self.ensemble.num_classes))

    def publish(self) -> float:
        started = self.clock()
        self.publish_fn(self.ensemble.combined())
        seconds = self.clock() - started
        self.cost.write_seconds = max(self.cost.write_seconds, seconds)
        return seconds

    # -------------------------------------------------------------------------------------------- first pass
    def first_pass(self) -> PassReport:
        from arena_dist.progress import progress_bar

        n = len(self.records)
        report = PassReport(FIRST_PASS.name, 0, False, 1.0, n)
        started = self.clock()
        sequences = self.scorer.encode(0, self.records, False)
        self.lengths = np.array([len(s) for s in sequences], dtype=np.int64)
        step = max(FIRST_PASS_MIN_CHUNK_ROWS, math.ceil(n / FIRST_PASS_CHUNKS))
        with progress_bar(f"predict {FIRST_PASS.name}", total=n) as bar:
            for start in range(0, n, step):
                rows = np.arange(start, min(n, start + step))
                self.score(0, False, rows, [sequences[i] for i in rows])
                bar.update(len(rows))
        self.cost.observe(0, float(self.lengths.sum()), self.clock() - started)
        write = self.publish()
        report.rows, report.chunks, report.seconds, report.stopped = n, 1, self.clock() - started, "complete"
        self.log(f"predict: {FIRST_PASS.name}: {n} rows in {report.seconds:.1f} s; submission written "
                 f"({write:.2f} s){self._time_left_text()}")
        return report

    # -------------------------------------------------------------------------------------------- refinement
    def time_left(self) -> float:
        return self.deadline - self.safety_margin - self.clock()

    def _time_left_text(self) -> str:
        return "" if self.deadline is None else f", {self.time_left():.1f} s left before the deadline's margin"

    def next_chunk(self, step: Pass, quota: int) -> tuple[np.ndarray, float] | None:
        """The rows of the next chunk (most uncertain first) and its predicted seconds; None when none fits."""
        done = self.ensemble.done(step.member, step.swap)
        candidates = np.flatnonzero(~done)
        order = most_uncertain_first(self.ensemble.combined(), candidates, self.measure)[:quota - int(done.sum())]
        predicted = np.cumsum(self.lengths[order]) * self.cost.seconds_per_token(step.member)
        if self.deadline is None:
            return order, float(predicted[-1])
        left = self.time_left() - self.cost.write_seconds
        share = CHUNK_SHARE if self.cost.measured(step.member) else PROBE_SHARE
        target = min(MAX_CHUNK_SHARE * left, max(share * left, MIN_CHUNK_WRITES * self.cost.write_seconds))
        take = int(np.searchsorted(predicted, target, side="right"))
        if take == 0 and predicted[0] <= left:
            take = 1
        if take == 0:
            return None
        return order[:take], float(predicted[take - 1]) + self.cost.write_seconds

    def refine(self, step: Pass) -> PassReport:
        n = len(self.records)
        quota = min(n, math.ceil(step.fraction * n))
        report = PassReport(step.name, step.member, step.swap, step.fraction, quota)
        while int(self.ensemble.done(step.member, step.swap).sum()) < quota:
            chunk = self.next_chunk(step, quota)
            if chunk is None:
                report.stopped = "deadline"
                self.log(f"predict: {step.name}: stopped at {report.rows}/{quota} rows: the next chunk would end "
                         f"past the deadline less its {self.safety_margin:.1f} s margin{self._time_left_text()}")
                return report
            rows, predicted = chunk
            started = self.clock()
            self.score(step.member, step.swap, rows)
            self.cost.observe(step.member, float(self.lengths[rows].sum()), self.clock() - started)
            write = self.publish()
            seconds = self.clock() - started
            self.chunks.append(ChunkReport(step.name, len(rows), int(self.lengths[rows].sum()), predicted, seconds,
                                           write))
            report.rows += len(rows)
            report.chunks += 1
            report.seconds += seconds
            report.predicted_seconds += predicted
            rate = len(rows) / seconds if seconds > 0 else float("inf")
            self.log(f"predict: {step.name}: {report.rows}/{quota} rows ({report.rows / quota:.0%}), chunk of "
                     f"{len(rows)} at {rate:,.1f} rows/s ({seconds:.2f} s, predicted {predicted:.2f} s); submission "
                     f"written{self._time_left_text()}")
        report.stopped = "complete"
        return report


def predict_in_budget(scorer, records: Sequence[dict], refine: Sequence[Pass], weights: Sequence[float],
                      num_classes: int, measure: str = "entropy", deadline: float | None = None,
                      safety_margin: float = 0.0, publish: Callable[[np.ndarray], None] = lambda probs: None,
                      clock: Callable[[], float] = time.monotonic,
                      log: Callable[[str], None] = lambda line: print(line, flush=True)) -> Outcome:
    """The first pass, then `refine` in order until done or out of time (see the module docstring)."""
    planner = Planner(scorer, records, weights, num_classes, measure, deadline, safety_margin, publish, clock, log)
    reports = [planner.first_pass()]
    refine_started = clock()
    out_of_time = False
    for step in refine:
        if out_of_time:
            reports.append(PassReport(step.name, step.member, step.swap, step.fraction,
                                      min(len(records), math.ceil(step.fraction * len(records)))))
            continue
        reports.append(planner.refine(step))
        out_of_time = reports[-1].stopped == "deadline"
    return Outcome(planner.ensemble, reports, planner.chunks, planner.padding, reports[0].seconds, refine_started,
                   clock(), deadline, safety_margin, planner.cost)
