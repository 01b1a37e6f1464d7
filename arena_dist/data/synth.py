"""Synthetic arena benchmark: comparisons drawn from a KNOWN preference model, so the best possible score is exact.

The generative story (all of it observable in the text, so the label distribution is a function of the text alone):

- A response is one or more turns of words. Most words are filler in the row's language (en, ru, zh-like, es) or
  topic words of the prompt's topic; a few are *quality words* (common English words such as "detailed" or "wrong")
  with hidden scores of roughly +-1. The same quality words appear in every language (code-mixing), so a small model
  learns them once.
- Hidden quality of a response = mean score of the quality words over all its turns (0 when it has none).
  Strength s = scale * quality + length_effect * log(number of words over all its turns).
- LMSYS (3 classes), Davidson's Bradley-Terry with ties, position bias added to A:
  P(A) ~ exp(sA + bias), P(B) ~ exp(sB), P(tie) ~ tie_strength * exp((sA + bias + sB) / 2).
- WSDM (2 classes, no ties): P(A) = sigmoid(sA - sB + bias).
- Generating "models" differ in skill: a skilled model picks high-score quality words more often. The label depends
  on the text only, so model names add realism without changing the Bayes risk.

`response_stats` / `true_probabilities` recompute everything from the written text (words split on whitespace,
punctuation stripped), which is how the quirky rows (null turns, lone surrogates ...) keep exact probabilities.

Generation is vectorised per chunk of CHUNK_ROWS rows with its own random stream (seed, stream, chunk number), so
the output depends on the seed only and large pools stream with bounded memory. numpy + pyarrow only.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Container, Iterator, Sequence

import numpy as np
from pydantic import Field, field_validator, model_validator

from arena_dist.classes import from_p_a
from arena_dist.config import StrictModel
from arena_dist.evaluate.metrics import log_loss
from arena_dist.progress import progress_bar

CHUNK_ROWS = 4096  # fixed: the random stream of a chunk depends on (seed, stream, chunk number) only
LN3 = math.log(3.0)

# --------------------------------------------------------------------------------------------------------------------
# Vocabulary
# --------------------------------------------------------------------------------------------------------------------

# Common English words, most of them a single token in the repo's BPE (and in real tokenizers), so a tiny model
# can read a word's score off one embedding.
QUALITY_POSITIVE = (
    "clear", "detailed", "accurate", "helpful", "correct", "complete", "concise", "example", "great", "good",
    "right", "true", "sure", "safe", "strong", "simple", "certain", "quick", "important", "useful",
)
QUALITY_NEGATIVE = (
    "wrong", "bad", "poor", "maybe", "unsure", "fail", "lost", "error", "harmful", "not", "never", "no", "hard",
    "slow", "problem", "miss", "late", "low", "wait", "dark",
)
QUALITY_WORDS = QUALITY_POSITIVE + QUALITY_NEGATIVE

FILLER = {
    "en": (
        "the of and to in is it you that this for on with as are be at by we can will an or from your which time "
        "first way people make data system answer question value number step result code use each more also some "
        "other into then than when how what about would there their like so only new work need know take see look "
        "here because these most many then after before over under between through while where why who should "
        "could might must does did has have had was were been being get got give find think tell ask show try call "
        "keep let start turn move part place case point group fact hand world life day year week month home water "
        "book idea plan list table line page text word name form kind level order model thing area story"
    ).split(),
    "ru": (
        "и в не на что я с он как это по но они к у же вы за бы так от то все она мы его только или если уже когда "
        "нет для есть время человек год дело жизнь день рука работа слово место вопрос ответ данные система число "
        "шаг результат код можно нужно очень также потом здесь там где почему который этот свой один два первый "
        "новый другой большой каждый после перед между через пока тоже может должен будет было были сказать "
        "сделать знать думать видеть взять найти дать"
    ).split(),
    "es": (
        "de la que el en y a los se del las un por con una su para es al lo como más pero sus le ya o fue este "
        "ha sí porque esta son entre cuando muy sin sobre ser también me hasta hay donde han quien están desde "
        "todo nos durante todos uno les ni contra otros ese eso ante ellos esto antes algunos qué unos yo otro "
        "otras otra él tanto esa estos mucho nada muchos cual poco ella estar estas algunas algo nosotros datos "
        "sistema respuesta pregunta tiempo código paso resultado valor número forma manera"
    ).split(),
}
_CJK_CHARS = (
    "的一是不了人我在有他这中大来上国个到说们为子和你地出道也时年得就那要下以生会自着去之过家学对可她里后小么心多天而能都"
    "然没日于起还发成事只作当想看文无开手十用主行方又如前所本见经头面公同三已老从动两长"
)


def _cjk_words() -> tuple[str, ...]:
    """A fixed Chinese-like filler vocabulary: 1- and 2-character words from common characters (fixed seed)."""
    rng = np.random.default_rng(20261120)
    chars = list(_CJK_CHARS)
    return tuple(dict.fromkeys(chars[:40] + ["".join(rng.choice(chars, 2)) for _ in range(140)]))


FILLER["zh"] = _cjk_words()
LANGUAGE_CODES = ("en", "ru", "zh", "es")
SENTENCE_END = {"en": ".", "ru": ".", "es": ".", "zh": "。"}
QUESTION_END = {"en": "?", "ru": "?", "es": "?", "zh": "？"}
_STRIP = ".,;:!?。？！"

TOPICS = {
    "python": "python function list loop exception class variable import module string".split(),
    "cooking": "recipe oven flour sugar sauce garlic onion pasta butter salt".split(),
    "history": "empire war king century treaty revolution castle dynasty battle queen".split(),
    "travel": "flight hotel city beach visa train luggage airport museum island".split(),
    "math": "equation integral proof matrix prime vector theorem fraction angle graph".split(),
    "health": "sleep diet exercise vitamin doctor fever muscle protein heart stress".split(),
    "finance": "stock budget loan interest tax market salary pension invoice crypto".split(),
    "music": "guitar song melody chord album rhythm piano concert lyrics drum".split(),
}
TOPIC_NAMES = tuple(TOPICS)

MODEL_NAMES = (
    "atlas-70b", "borealis-8b", "cirrus-14b", "dynamo-3b", "ember-9b", "fjord-32b", "gale-7b", "helix-72b",
)


def _word_table() -> tuple[np.ndarray, dict[str, tuple[int, int]], dict[str, tuple[int, int]]]:
    """One object array of every word: quality words first (ids 0..Q-1), then filler per language, then topics."""
    words: list[str] = list(QUALITY_WORDS)
    filler_range, topic_range = {}, {}
    for code in LANGUAGE_CODES:
        filler_range[code] = (len(words), len(FILLER[code]))
        words.extend(FILLER[code])
    for name in TOPIC_NAMES:
        topic_range[name] = (len(words), len(TOPICS[name]))
        words.extend(TOPICS[name])
    quality = set(QUALITY_WORDS)
    clash = [w for w in words[len(QUALITY_WORDS):] if w.strip(_STRIP) in quality]
    assert not clash, f"filler/topic words clash with quality words: {clash}"
    return np.array(words, dtype=object), filler_range, topic_range


WORDS, FILLER_RANGE, TOPIC_RANGE = _word_table()
_FILLER_START = np.array([FILLER_RANGE[c][0] for c in LANGUAGE_CODES])
_FILLER_SIZE = np.array([FILLER_RANGE[c][1] for c in LANGUAGE_CODES])
_TOPIC_START = np.array([TOPIC_RANGE[t][0] for t in TOPIC_NAMES])
_TOPIC_SIZE = np.array([TOPIC_RANGE[t][1] for t in TOPIC_NAMES])


# --------------------------------------------------------------------------------------------------------------------
# Parameters (pydantic sections, reused by the `synth` stage config)
# --------------------------------------------------------------------------------------------------------------------


class PreferenceParams(StrictModel):
    """The hidden preference model."""

    scale: float = Field(2.8, ge=0, description="weight of the mean quality-word score in the strength s")
    length_effect: float = Field(0.25, description="weight of log(number of words) in s")
    position_bias: float = Field(0.1, description="added to A's strength (position effect)")
    tie_strength: float = Field(1.35, gt=0, description="Davidson tie parameter nu")
    score_min: float = Field(0.3, ge=0, description="smallest |score| of a quality word")
    score_max: float = Field(1.0, gt=0, description="largest |score| of a quality word")
    skill_spread: float = Field(1.5, ge=0, description="model skills are spread evenly in [-spread, +spread]")
    vocab_seed: int = Field(1234, description="seed of the hidden word scores (separate from the sampling seed)")

    @model_validator(mode="after")
    def _score_range(self):
        if self.score_min > self.score_max:
            raise ValueError("score_min must be <= score_max")
        return self


class TextParams(StrictModel):
    """Shape of prompts and responses (word counts per turn)."""

    response_min_words: int = Field(8, ge=2)
    response_max_words: int = Field(40, ge=2)
    prompt_min_words: int = Field(5, ge=1)
    prompt_max_words: int = Field(20, ge=1)
    quality_density: float = Field(0.05, ge=0, le=1, description="share of the other words that are quality words")
    max_quality_words: int = Field(6, ge=1, description="at most this many quality words per turn")
    topic_share: float = Field(0.15, ge=0, le=1, description="share of topic words among a response's other words")
    sentence_end_rate: float = Field(0.12, ge=0, le=1)
    quality_position_spread: float = Field(
        1000.0, gt=0,
        description="quality words sit within about this many words of a turn's start (opening phrases like "
                    "'Sure, here is a clear ...' / 'Sorry, ...'); large = anywhere. Position never changes the label.")

    @model_validator(mode="after")
    def _ranges(self):
        if self.response_min_words > self.response_max_words:
            raise ValueError("response_min_words must be <= response_max_words")
        if self.prompt_min_words > self.prompt_max_words:
            raise ValueError("prompt_min_words must be <= prompt_max_words")
        return self


class SynthSpec(StrictModel):
    """Everything that defines the distribution of comparisons (not the counts or the output place)."""

    languages: dict[str, float] = Field(default_factory=lambda: {"en": 0.55, "ru": 0.15, "zh": 0.15, "es": 0.15})
    multi_turn_share: float = Field(0.15, ge=0, le=1)
    max_turns: int = Field(3, ge=2)
    preference: PreferenceParams = Field(default_factory=PreferenceParams)
    text: TextParams = Field(default_factory=TextParams)

    @field_validator("languages")
    @classmethod
    def _known_languages(cls, value: dict[str, float]) -> dict[str, float]:
        unknown = sorted(set(value) - set(LANGUAGE_CODES))
        if unknown:
            raise ValueError(f"unknown language {unknown[0]!r} (known: {', '.join(LANGUAGE_CODES)})")
        if not value or any(w < 0 for w in value.values()) or sum(value.values()) <= 0:
            raise ValueError("language weights must be >= 0 with a positive sum")
        return value


# --------------------------------------------------------------------------------------------------------------------
# The preference model
# --------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class World:
    """Hidden word scores and model skills of one preference model."""

    params: PreferenceParams
    scores: np.ndarray  # (Q,) score per quality word, aligned with QUALITY_WORDS
    skills: np.ndarray  # (M,) skill per model, aligned with MODEL_NAMES
    pick_cdf: np.ndarray  # (M, Q) cumulative probability of picking each quality word, per model

    @property
    def score_of(self) -> dict[str, float]:
        return dict(zip(QUALITY_WORDS, self.scores.tolist()))

    def strength(self, qsum, qcount, nwords):
        """s = scale * mean quality score + length_effect * log(words); arrays or scalars."""
        qsum, qcount, nwords = np.asarray(qsum, float), np.asarray(qcount, float), np.asarray(nwords, float)
        quality = np.divide(qsum, qcount, out=np.zeros_like(qsum), where=qcount > 0)
        return self.params.scale * quality + self.params.length_effect * np.log(np.maximum(nwords, 1.0))

    def three_class(self, s_a, s_b) -> np.ndarray:
        """Davidson probabilities (n, 3) for (A, B, tie), position bias added to A."""
        a = np.asarray(s_a, float) + self.params.position_bias
        b = np.asarray(s_b, float)
        logits = np.stack([a, b, math.log(self.params.tie_strength) + (a + b) / 2], axis=-1)
        logits -= logits.max(axis=-1, keepdims=True)
        expd = np.exp(logits)
        return expd / expd.sum(axis=-1, keepdims=True)

    def two_class(self, s_a, s_b, position_bias: bool = True) -> np.ndarray:
        """P(A) = sigmoid(sA - sB + bias) (WSDM; no bias for position-free pairwise sets)."""
        bias = self.params.position_bias if position_bias else 0.0
        return 1.0 / (1.0 + np.exp(-(np.asarray(s_a, float) - np.asarray(s_b, float) + bias)))


def build_world(params: PreferenceParams | None = None) -> World:
    params = params or PreferenceParams()
    return _build_world_cached(params.model_dump_json())


@lru_cache(maxsize=16)
def _build_world_cached(params_json: str) -> World:
    params = PreferenceParams.model_validate_json(params_json)
    rng = np.random.default_rng(params.vocab_seed)
    magnitude = rng.uniform(params.score_min, params.score_max, size=len(QUALITY_WORDS))
    sign = np.array([1.0] * len(QUALITY_POSITIVE) + [-1.0] * len(QUALITY_NEGATIVE))
    scores = sign * magnitude
    skills = np.linspace(-params.skill_spread, params.skill_spread, len(MODEL_NAMES))
    skills = skills[rng.permutation(len(MODEL_NAMES))]  # names carry no order
    tilt = np.exp(skills[:, None] * scores[None, :])
    pick = tilt / tilt.sum(axis=1, keepdims=True)
    cdf = np.cumsum(pick, axis=1)
    cdf[:, -1] = 1.0
    return World(params=params, scores=scores, skills=skills, pick_cdf=cdf)


def response_stats(turns: Sequence[str | None], world: World | None = None) -> tuple[float, int, int]:
    """(sum of quality scores, number of quality words, number of words) of a response, read from its text.

    Words are whitespace-separated; surrounding punctuation is stripped before the quality-word lookup. `None`
    turns (JSON null) count as empty. This is the definition the generator's labels follow.
    """
    score_of = (world or build_world()).score_of
    qsum, qcount, nwords = 0.0, 0, 0
    for turn in turns:
        if not turn:
            continue
        tokens = turn.split()
        nwords += len(tokens)
        for token in tokens:
            score = score_of.get(token.strip(_STRIP))
            if score is not None:
                qsum += score
                qcount += 1
    return qsum, qcount, nwords


def true_probabilities(
    response_a: Sequence[str | None], response_b: Sequence[str | None], spec: SynthSpec | PreferenceParams | None = None
) -> dict[str, float]:
    """Exact label probabilities of one comparison from its text: p_a, p_b, p_tie (3-class) and p_a_2class (WSDM)."""
    params = spec.preference if isinstance(spec, SynthSpec) else spec
    world = build_world(params)
    s_a = world.strength(*response_stats(response_a, world))
    s_b = world.strength(*response_stats(response_b, world))
    p3 = world.three_class(s_a, s_b)
    return {"p_a": float(p3[0]), "p_b": float(p3[1]), "p_tie": float(p3[2]),
            "p_a_2class": float(world.two_class(s_a, s_b))}


# --------------------------------------------------------------------------------------------------------------------
# Vectorised generation
# --------------------------------------------------------------------------------------------------------------------

STREAMS = {"lmsys_train": 1, "lmsys_test": 2, "pool": 3, "wsdm_train": 4, "wsdm_test": 5, "pairs": 6, "hh": 7,
           "quirks": 8}


def chunk_rng(seed: int, stream: str, chunk: int) -> np.random.Generator:
    return np.random.default_rng([seed, STREAMS[stream], chunk])


@dataclass
class Batch:
    """A chunk of generated comparisons (texts + exact probabilities)."""

    prompt: list[list[str]]
    response_a: list[list[str]]
    response_b: list[list[str]]
    language: list[str]
    model_a: list[str]
    model_b: list[str]
    s_a: np.ndarray
    s_b: np.ndarray
    probs: np.ndarray  # (n, 3): A, B, tie (Davidson, with position bias)
    p2: np.ndarray  # (n,): P(A) in the 2-class model (with position bias)

    def __len__(self) -> int:
        return len(self.prompt)


def _log_uniform_int(rng: np.random.Generator, low: int, high: int, size: int) -> np.ndarray:
    values = np.exp(rng.uniform(math.log(low), math.log(high + 1), size=size)).astype(np.int64)
    return np.clip(values, low, high)


def _segments(
    rng: np.random.Generator, lang: np.ndarray, topic: np.ndarray, model: np.ndarray | None, length: np.ndarray,
    text: TextParams, world: World, question: bool = False,
) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Texts of S segments (a turn of a prompt or a response) and their quality (score sum, count).

    `model` None -> a prompt: no quality words, ends with a question mark.
    """
    n_seg = len(length)
    total = int(length.sum())
    seg = np.repeat(np.arange(n_seg), length)
    start = np.concatenate([[0], np.cumsum(length)[:-1]])
    is_quality = np.zeros(total, dtype=bool)
    qcount = np.zeros(n_seg, dtype=np.int64)
    if model is not None:
        extra = rng.binomial(np.maximum(length - 1, 0), text.quality_density)
        qcount = np.minimum(1 + extra, np.minimum(text.max_quality_words, length))
        # The k positions with the smallest keys in each segment hold the quality words; the key grows with the
        # position in the turn, so a small spread keeps them near the start.
        position = np.arange(total) - start[seg]
        key = position + rng.exponential(text.quality_position_spread, size=total)
        order = np.lexsort((key, seg))
        rank = np.arange(total) - start[seg[order]]
        is_quality[order] = rank < qcount[seg[order]]
    topic_share = 0.35 if model is None else text.topic_share
    use_topic = rng.random(total) < topic_share
    filler_pick = (rng.random(total) * _FILLER_SIZE[lang[seg]]).astype(np.int64)
    topic_pick = (rng.random(total) * _TOPIC_SIZE[topic[seg]]).astype(np.int64)
    word_id = np.where(use_topic, _TOPIC_START[topic[seg]] + topic_pick, _FILLER_START[lang[seg]] + filler_pick)
    qsum = np.zeros(n_seg)
    if model is not None:
        slots = np.flatnonzero(is_quality)
        cdf = world.pick_cdf[model[seg[slots]]]
        picked = (rng.random(len(slots))[:, None] > cdf).sum(axis=1)
        word_id[slots] = picked
        qsum = np.bincount(seg[slots], weights=world.scores[picked], minlength=n_seg)
    tokens = WORDS[word_id]
    last = start + length - 1  # the last word of each segment, which always ends a sentence (or the question)
    ends = rng.random(total) < text.sentence_end_rate
    ends[last] = True
    marks = np.array([SENTENCE_END[c] for c in LANGUAGE_CODES], dtype=object)[lang[seg]]
    if question:
        marks[last] = np.array([QUESTION_END[c] for c in LANGUAGE_CODES], dtype=object)[lang[seg[last]]]
    tokens[ends] = tokens[ends] + marks[ends]
    token_list = tokens.tolist()
    bounds = np.concatenate([start, [total]]).tolist()
    texts = [" ".join(token_list[bounds[i]:bounds[i + 1]]) for i in range(n_seg)]
    return texts, qsum, qcount


def generate_batch(
    rng: np.random.Generator, n: int, spec: SynthSpec, *, single_turn: bool = False, shared_history: bool = False,
    force_multi_turn: np.ndarray | None = None,
) -> Batch:
    """`n` comparisons. `shared_history`: earlier turns of B equal A's (Human/Assistant pairwise style)."""
    world = build_world(spec.preference)
    text = spec.text
    codes = [c for c in LANGUAGE_CODES if spec.languages.get(c, 0) > 0]
    weights = np.array([spec.languages[c] for c in codes], float)
    lang = np.array([LANGUAGE_CODES.index(c) for c in codes])[rng.choice(len(codes), size=n, p=weights / weights.sum())]
    topic = rng.integers(0, len(TOPIC_NAMES), size=n)
    turns = np.ones(n, dtype=np.int64)
    if not single_turn:
        multi = rng.random(n) < spec.multi_turn_share
        if force_multi_turn is not None:
            multi |= force_multi_turn
        turns = np.where(multi, rng.integers(2, spec.max_turns + 1, size=n), 1)
    n_models = len(MODEL_NAMES)
    model_a = rng.integers(0, n_models, size=n)
    model_b = (model_a + rng.integers(1, n_models, size=n)) % n_models  # a different model

    row = np.repeat(np.arange(n), turns)  # one entry per (row, turn)
    n_seg = len(row)
    p_len = rng.integers(text.prompt_min_words, text.prompt_max_words + 1, size=n_seg)
    a_len = _log_uniform_int(rng, text.response_min_words, text.response_max_words, n_seg)
    b_len = _log_uniform_int(rng, text.response_min_words, text.response_max_words, n_seg)
    prompts, _, _ = _segments(rng, lang[row], topic[row], None, p_len, text, world, question=True)
    a_text, a_qsum, a_qcnt = _segments(rng, lang[row], topic[row], model_a[row], a_len, text, world)
    b_text, b_qsum, b_qcnt = _segments(rng, lang[row], topic[row], model_b[row], b_len, text, world)
    if shared_history:
        row_start = np.concatenate([[0], np.cumsum(turns)[:-1]])
        earlier = np.arange(n_seg) < (row_start + turns - 1)[row]  # all but each row's last turn
        for i in np.flatnonzero(earlier):
            b_text[i] = a_text[i]
        b_qsum, b_qcnt, b_len = (np.where(earlier, x, y) for x, y in ((a_qsum, b_qsum), (a_qcnt, b_qcnt),
                                                                        (a_len, b_len)))

    def per_row(values):
        return np.bincount(row, weights=values, minlength=n)

    s_a = world.strength(per_row(a_qsum), per_row(a_qcnt), per_row(a_len))
    s_b = world.strength(per_row(b_qsum), per_row(b_qcnt), per_row(b_len))
    bounds = np.concatenate([[0], np.cumsum(turns)]).tolist()

    def split(values):
        return [values[bounds[i]:bounds[i + 1]] for i in range(n)]

    return Batch(
        prompt=split(prompts), response_a=split(a_text), response_b=split(b_text),
        language=[LANGUAGE_CODES[i] for i in lang], model_a=[MODEL_NAMES[i] for i in model_a],
        model_b=[MODEL_NAMES[i] for i in model_b], s_a=s_a, s_b=s_b,
        probs=world.three_class(s_a, s_b), p2=world.two_class(s_a, s_b),
    )


def recompute_row(batch: Batch, i: int, spec: SynthSpec) -> None:
    """Re-derive row i's probabilities from its (edited) text."""
    world = build_world(spec.preference)
    batch.s_a[i] = world.strength(*response_stats(batch.response_a[i], world))
    batch.s_b[i] = world.strength(*response_stats(batch.response_b[i], world))
    batch.probs[i] = world.three_class(batch.s_a[i], batch.s_b[i])
    batch.p2[i] = world.two_class(batch.s_a[i], batch.s_b[i])


def draw_three_class(rng: np.random.Generator, probs: np.ndarray) -> np.ndarray:
    """Labels 0 = A, 1 = B, 2 = tie."""
    u = rng.random(len(probs))
    return (u[:, None] > np.cumsum(probs, axis=1)[:, :2]).sum(axis=1)


def iter_batches(
    n: int, seed: int, stream: str, spec: SynthSpec, multi_turn_rows: Container[int] = (), progress: str | None = None,
    **kwargs,
) -> Iterator[tuple[int, Batch, np.random.Generator]]:
    """Yield (offset, batch, rng) over n rows in chunks of CHUNK_ROWS, each chunk from its own seeded stream.

    The chunk's generator is handed on so labels are drawn from the same stream (after any edits of the batch).
    Rows in `multi_turn_rows` are generated multi-turn (a null turn must replace one of several turns to keep the
    row valid). `progress` names a progress bar, advanced once the caller is done with each batch.
    """
    bar = progress_bar(progress, n) if progress else None
    for chunk, offset in enumerate(range(0, n, CHUNK_ROWS)):
        size = min(CHUNK_ROWS, n - offset)
        rng = chunk_rng(seed, stream, chunk)
        force = np.array([offset + i in multi_turn_rows for i in range(size)], dtype=bool)
        yield offset, generate_batch(rng, size, spec, force_multi_turn=force, **kwargs), rng
        if bar is not None:
            bar.update(size)
    if bar is not None:
        bar.close()


# --------------------------------------------------------------------------------------------------------------------
# Scoring helpers
# --------------------------------------------------------------------------------------------------------------------


class BayesMeter:
    """Accumulates the Bayes-optimal scores of the labels drawn (realised) and their expectation."""

    def __init__(self, classes: int):
        self.classes = classes
        self.n = 0
        self.nll = 0.0
        self.entropy = 0.0
        self.correct = 0
        self.expected_correct = 0.0
        self.label_counts = np.zeros(classes, dtype=np.int64)
        self.expected_counts = np.zeros(classes)

    def add(self, probs: np.ndarray, labels: np.ndarray | None) -> None:
        probs = np.asarray(probs, float)
        safe = np.clip(probs, 1e-300, 1.0)
        self.n += len(probs)
        self.entropy += float(-(probs * np.log(safe)).sum())
        self.expected_correct += float(probs.max(axis=1).sum())
        self.expected_counts += probs.sum(axis=0)
        if labels is not None:
            self.nll += (log_loss(probs, labels) or 0.0) * len(labels)  # the score evaluate gives, as a sum
            self.correct += int((probs.argmax(axis=1) == labels).sum())
            self.label_counts += np.bincount(labels, minlength=self.classes)

    def summary(self, labelled: bool = True) -> dict:
        n = max(self.n, 1)
        out = {"rows": self.n, "expected_log_loss": self.entropy / n, "expected_accuracy": self.expected_correct / n}
        if labelled:
            out.update(log_loss=self.nll / n, accuracy=self.correct / n,
                       label_share=(self.label_counts / n).round(6).tolist())
        out["expected_label_share"] = (self.expected_counts / n).round(6).tolist()
        if self.classes == 3:
            out["expected_tie_rate"] = float(self.expected_counts[2] / n)
            if labelled:
                out["tie_rate"] = float(self.label_counts[2] / n)
        return out


# --------------------------------------------------------------------------------------------------------------------
# Text encodings of the competition formats
# --------------------------------------------------------------------------------------------------------------------

_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def json_cell(turns: Sequence[str | None]) -> str:
    """JSON list as in LMSYS csv cells: real UTF-8 text, lone surrogates written as `\\udXXX` escapes."""
    text = json.dumps(list(turns), ensure_ascii=False)
    return _LONE_SURROGATE.sub(lambda m: "\\u%04x" % ord(m.group()), text)


def hh_transcript(prompt: Sequence[str], responses: Sequence[str]) -> str:
    return "".join(f"\n\nHuman: {p}\n\nAssistant: {r}" for p, r in zip(prompt, responses))


# --------------------------------------------------------------------------------------------------------------------
# Streaming pool writer (public: used for the 1M-row memory benchmark)
# --------------------------------------------------------------------------------------------------------------------


def generate_pool(
    n: int, seed: int, out_path: str | Path, spec: SynthSpec | None = None, answers_path: str | Path | None = None,
    progress: bool = True,
) -> dict:
    """Write an unlabelled pool of `n` comparisons to `out_path` (parquet, one row group per chunk, streamed).

    Columns: id, prompt, response_a, response_b (lists of strings, one per turn), language. The exact probabilities
    go to `answers_path` (default: `<stem>_answers.parquet` beside it): id, p_a, p_b, p_tie, p_a_2class.
    Returns the Bayes summary (expected log loss etc.) and the paths. Memory stays at one chunk.
    """
    import pyarrow as pa

    spec = spec or SynthSpec()
    out_path = Path(out_path)
    answers_path = Path(answers_path) if answers_path else out_path.with_name(f"{out_path.stem}_answers.parquet")
    pool_schema = pa.schema([
        ("id", pa.string()), ("prompt", pa.list_(pa.string())), ("response_a", pa.list_(pa.string())),
        ("response_b", pa.list_(pa.string())), ("language", pa.string()),
    ])
    answer_schema = pa.schema([("id", pa.string()), ("p_a", pa.float64()), ("p_b", pa.float64()),
                               ("p_tie", pa.float64()), ("p_a_2class", pa.float64())])
    meter = BayesMeter(3)
    meter2 = BayesMeter(2)
    with contextlib.ExitStack() as stack:
        pool_writer = _parquet_writer(stack, out_path, pool_schema)
        answer_writer = _parquet_writer(stack, answers_path, answer_schema)
        for offset, batch, _ in iter_batches(n, seed, "pool", spec, progress="[synth] pool" if progress else None):
            ids = [f"pool-{offset + i:08d}" for i in range(len(batch))]
            pool_writer.write_table(pa.table({
                "id": ids, "prompt": batch.prompt, "response_a": batch.response_a,
                "response_b": batch.response_b, "language": batch.language}, schema=pool_schema))
            answer_writer.write_table(pa.table({
                "id": ids, "p_a": batch.probs[:, 0], "p_b": batch.probs[:, 1], "p_tie": batch.probs[:, 2],
                "p_a_2class": batch.p2}, schema=answer_schema))
            meter.add(batch.probs, None)
            meter2.add(from_p_a(batch.p2), None)
    return {"path": str(out_path), "answers": str(answers_path), "three_class": meter.summary(labelled=False),
            "two_class": meter2.summary(labelled=False)}


def write_prompts(n: int, seed: int, out_path: str | Path, spec: SynthSpec | None = None,
                  progress: bool = True) -> dict:
    """The prompts of the pool `generate_pool(n, seed)` would write (same ids, same first user turn, same
    language), as a conversations file (JSON lines: id, messages, language) for `arena-dist generate` to answer.
    Only the first user turn of each prompt is kept: that is what a `conversations` source reads."""
    from arena_dist.io import atomic_path

    spec = spec or SynthSpec()
    out_path = Path(out_path)
    with atomic_path(out_path) as tmp, open(tmp, "w", encoding="utf-8") as out:
        for offset, batch, _ in iter_batches(n, seed, "pool", spec, progress="[synth] prompts" if progress else None):
            for i in range(len(batch)):
                out.write(json.dumps({"id": f"pool-{offset + i:08d}", "language": str(batch.language[i]),
                                      "messages": [{"role": "user", "content": batch.prompt[i][0]}]},
                                     ensure_ascii=False) + "\n")
    return {"path": str(out_path), "rows": n}


# --------------------------------------------------------------------------------------------------------------------
# LMSYS csv (train with quirks, test, answers)
# --------------------------------------------------------------------------------------------------------------------

QUIRK_KINDS = ("null_turn", "lone_surrogate", "duplicate", "bad_json", "turn_count_mismatch", "identical_responses")
# Rows the prepare stage must quarantine (names as its quarantine reasons).
MALFORMED_KINDS = ("bad_json", "turn_count_mismatch", "identical_responses")
_SURROGATES = ("\ud83d", "\ud83e", "\ude00")


class QuirkParams(StrictModel):
    """Shares of LMSYS train rows given a real-data quirk on purpose (each > 0 gives at least one row)."""

    null_turn_share: float = Field(0.01, ge=0, le=0.2, description="a JSON null turn in a multi-turn response")
    lone_surrogate_share: float = Field(0.01, ge=0, le=0.2, description="a lone surrogate escape in a response")
    duplicate_share: float = Field(0.005, ge=0, le=0.2, description="a copy of a nearby row (A/B swapped every other)")
    bad_json_share: float = Field(0.003, ge=0, le=0.2, description="a response cell that is not valid JSON")
    turn_count_mismatch_share: float = Field(0.003, ge=0, le=0.2, description="response_b with another turn count")
    identical_responses_share: float = Field(0.003, ge=0, le=0.2, description="response_b equal to response_a")

    def counts(self, n_rows: int) -> dict[str, int]:
        shares = {kind: getattr(self, f"{kind}_share") for kind in QUIRK_KINDS}
        return {kind: min(n_rows, math.ceil(share * n_rows)) if share > 0 and n_rows > 1 else 0
                for kind, share in shares.items()}


def assign_quirks(n_rows: int, seed: int, quirks: QuirkParams) -> dict[int, str]:
    """Row index -> quirk kind; disjoint rows, seeded. Fewer than asked only when there are not enough rows."""
    order = chunk_rng(seed, "quirks", 0).permutation(n_rows).tolist()
    assigned, position = {}, 0
    for kind, count in quirks.counts(n_rows).items():
        for row in order[position:position + count]:
            assigned[row] = kind
        position += count
    return assigned


def _apply_quirk(batch: Batch, i: int, kind: str, rng: np.random.Generator, spec: SynthSpec, quirk_rows: set[int],
                 offset: int) -> bool:
    """Edit row i in place and re-derive its probabilities from the edited text; False if it cannot apply."""
    if kind in ("null_turn", "lone_surrogate"):  # a null turn: the row was generated multi-turn (forced)
        side = batch.response_a if rng.random() < 0.5 else batch.response_b
        side[i] = list(side[i])
        turn = int(rng.integers(0, len(side[i])))
        if kind == "null_turn":
            side[i][turn] = None  # type: ignore[call-overload]
        else:
            side[i][turn] = f"{side[i][turn]} {_SURROGATES[int(rng.integers(0, len(_SURROGATES)))]}"
    elif kind == "duplicate":
        # Copy the nearest clean row of the same chunk; every other copy has A and B swapped.
        n = len(batch)
        if n < 2:
            return False  # a chunk of one row has nothing to copy
        candidates = [j for j in list(range(i - 1, -1, -1)) + list(range(i + 1, n)) if offset + j not in quirk_rows]
        j = candidates[0] if candidates else (i - 1 if i > 0 else i + 1)
        swap = (offset + i) % 2 == 1
        batch.prompt[i] = list(batch.prompt[j])
        a, b = (batch.response_b[j], batch.response_a[j]) if swap else (batch.response_a[j], batch.response_b[j])
        ma, mb = (batch.model_b[j], batch.model_a[j]) if swap else (batch.model_a[j], batch.model_b[j])
        batch.response_a[i], batch.response_b[i] = list(a), list(b)
        batch.model_a[i], batch.model_b[i], batch.language[i] = ma, mb, batch.language[j]
    elif kind == "turn_count_mismatch":
        turns = list(batch.response_b[i])
        batch.response_b[i] = turns[:-1] if len(turns) > 1 else turns + turns
    elif kind == "identical_responses":
        batch.response_b[i] = list(batch.response_a[i])
    # bad_json is applied when the cell is written; its probabilities stay those of the intended text.
    recompute_row(batch, i, spec)
    return True


def _parquet_writer(stack: contextlib.ExitStack, path: Path, schema):
    """A ParquetWriter whose file replaces `path` atomically when `stack` closes without an error."""
    import pyarrow.parquet as pq

    from arena_dist.io import atomic_path

    return stack.enter_context(pq.ParquetWriter(stack.enter_context(atomic_path(path)), schema))


def _csv_writer(stack: contextlib.ExitStack, path: Path):
    """A csv writer (UTF-8, "\\n" line ends) whose file replaces `path` atomically when `stack` closes cleanly."""
    import csv

    from arena_dist.io import atomic_path

    handle = stack.enter_context(open(stack.enter_context(atomic_path(path)), "w", newline="", encoding="utf-8"))
    return csv.writer(handle, lineterminator="\n")


def write_lmsys(
    out_dir: str | Path, n_train: int, n_test: int, seed: int, spec: SynthSpec, quirks: QuirkParams,
    progress: bool = True,
) -> dict:
    """lmsys/train.csv (with quirks), lmsys/test.csv (no labels), lmsys/test_answers.csv (one-hot + p + language)."""
    out_dir = Path(out_dir)
    quirk_of = assign_quirks(n_train, seed, quirks)
    quirk_rows = set(quirk_of)
    injected = {kind: 0 for kind in QUIRK_KINDS}
    train_all, train_valid = BayesMeter(3), BayesMeter(3)
    with contextlib.ExitStack() as stack:
        writer = _csv_writer(stack, out_dir / "lmsys" / "train.csv")
        writer.writerow(["id", "model_a", "model_b", "prompt", "response_a", "response_b", "winner_model_a",
                         "winner_model_b", "winner_tie"])
        null_turn_rows = {row for row, kind in quirk_of.items() if kind == "null_turn"}
        for offset, batch, rng in iter_batches(n_train, seed, "lmsys_train", spec, multi_turn_rows=null_turn_rows,
                                               progress="[synth] lmsys train" if progress else None):
            for i in range(len(batch)):
                kind = quirk_of.get(offset + i)
                if kind and kind != "bad_json" and not _apply_quirk(batch, i, kind, rng, spec, quirk_rows, offset):
                    del quirk_of[offset + i]  # not injected, so not counted
            labels = draw_three_class(rng, batch.probs)
            malformed = np.array([quirk_of.get(offset + i) in MALFORMED_KINDS for i in range(len(batch))])
            train_all.add(batch.probs, labels)
            train_valid.add(batch.probs[~malformed], labels[~malformed])
            for i in range(len(batch)):
                kind = quirk_of.get(offset + i)
                if kind:
                    injected[kind] += 1
                response_a = json_cell(batch.response_a[i])
                if kind == "bad_json":
                    response_a = response_a[:-1]  # unterminated list
                onehot = [int(labels[i] == k) for k in range(3)]
                writer.writerow([10_000_000 + offset + i, batch.model_a[i], batch.model_b[i],
                                 json_cell(batch.prompt[i]), response_a, json_cell(batch.response_b[i]), *onehot])

    test_meter = BayesMeter(3)
    by_language: dict[str, BayesMeter] = {}
    with contextlib.ExitStack() as stack:
        test_writer = _csv_writer(stack, out_dir / "lmsys" / "test.csv")
        answer_writer = _csv_writer(stack, out_dir / "lmsys" / "test_answers.csv")
        test_writer.writerow(["id", "prompt", "response_a", "response_b"])
        answer_writer.writerow(["id", "winner_model_a", "winner_model_b", "winner_tie", "p_a", "p_b", "p_tie",
                                "language"])
        for offset, batch, rng in iter_batches(n_test, seed, "lmsys_test", spec):
            labels = draw_three_class(rng, batch.probs)
            test_meter.add(batch.probs, labels)
            for code in sorted(set(batch.language)):
                rows = np.array([lang == code for lang in batch.language])
                by_language.setdefault(code, BayesMeter(3)).add(batch.probs[rows], labels[rows])
            for i in range(len(batch)):
                row_id = 20_000_000 + offset + i
                test_writer.writerow([row_id, json_cell(batch.prompt[i]), json_cell(batch.response_a[i]),
                                      json_cell(batch.response_b[i])])
                answer_writer.writerow([row_id, *[int(labels[i] == k) for k in range(3)],
                                        *[repr(float(p)) for p in batch.probs[i]], batch.language[i]])
    test_summary = test_meter.summary()
    test_summary["by_language"] = {code: m.summary() for code, m in sorted(by_language.items())}
    return {"files": {"lmsys/train.csv": train_all.summary(), "lmsys/test.csv": test_summary},
            "train_valid_rows": train_valid.summary(), "injected": injected}


# --------------------------------------------------------------------------------------------------------------------
# WSDM parquet and pairwise JSONL
# --------------------------------------------------------------------------------------------------------------------


def _wsdm_id(seed: int, split: str, index: int) -> str:
    import hashlib

    return hashlib.sha256(f"wsdm/{seed}/{split}/{index}".encode()).hexdigest()[:32]


def write_wsdm(out_dir: str | Path, n_train: int, n_test: int, seed: int, spec: SynthSpec) -> dict:
    """wsdm/train.parquet, wsdm/test.parquet (no winner), wsdm/test_answers.parquet (id, winner, p_a, language).

    One turn per row (plain strings); 2 classes: P(A) = sigmoid(sA - sB + position bias), no ties.
    """
    import pyarrow as pa

    out_dir = Path(out_dir)
    text_fields = [("id", pa.string()), ("prompt", pa.string()), ("response_a", pa.string()),
                   ("response_b", pa.string())]
    train_schema = pa.schema(text_fields + [("winner", pa.string()), ("model_a", pa.string()),
                                            ("model_b", pa.string()), ("language", pa.string())])
    test_schema = pa.schema(text_fields + [("language", pa.string())])
    answer_schema = pa.schema([("id", pa.string()), ("winner", pa.string()), ("p_a", pa.float64()),
                               ("language", pa.string())])
    summaries = {}
    for split, n in (("train", n_train), ("test", n_test)):
        meter = BayesMeter(2)
        with contextlib.ExitStack() as stack:
            writer = _parquet_writer(stack, out_dir / "wsdm" / f"{split}.parquet",
                                     train_schema if split == "train" else test_schema)
            if split == "test":
                answer_writer = _parquet_writer(stack, out_dir / "wsdm" / "test_answers.parquet", answer_schema)
            for offset, batch, rng in iter_batches(n, seed, f"wsdm_{split}", spec, single_turn=True):
                labels = (rng.random(len(batch)) >= batch.p2).astype(np.int64)  # 0 = A with probability p2
                meter.add(from_p_a(batch.p2), labels)
                columns = {
                    "id": [_wsdm_id(seed, split, offset + i) for i in range(len(batch))],
                    "prompt": [p[0] for p in batch.prompt], "response_a": [r[0] for r in batch.response_a],
                    "response_b": [r[0] for r in batch.response_b], "model_a": batch.model_a,
                    "model_b": batch.model_b, "language": batch.language, "p_a": batch.p2,
                    "winner": ["model_a" if label == 0 else "model_b" for label in labels],
                }
                # Each file takes the columns its schema names (the test file has no winner: that is the answer).
                writer.write_table(pa.table(columns, schema=writer.schema))
                if split == "test":
                    answer_writer.write_table(pa.table(columns, schema=answer_schema))
        summaries[f"wsdm/{split}.parquet"] = meter.summary()
    return {"files": summaries}


def write_pairwise(out_dir: str | Path, n_pairwise: int, seed: int, spec: SynthSpec) -> dict:
    """pairwise/pairs.jsonl (explicit prompt/chosen/rejected, one turn) and pairwise/hh.jsonl (Human/Assistant
    transcripts; multi-turn rows share all but the last assistant turn). Chosen = the winner of a drawn non-tie
    comparison: P(A chosen) = sigmoid(sA - sB) (no position in a chosen/rejected pair)."""
    from arena_dist.io import atomic_path

    out_dir = Path(out_dir)
    world = build_world(spec.preference)
    sizes = {"pairs": n_pairwise - n_pairwise // 2, "hh": n_pairwise // 2}
    summaries = {}
    for style, n in sizes.items():
        meter = BayesMeter(2)
        kwargs = {"single_turn": True} if style == "pairs" else {"shared_history": True}
        with atomic_path(out_dir / "pairwise" / f"{style}.jsonl") as tmp, open(tmp, "w", encoding="utf-8") as handle:
            for offset, batch, rng in iter_batches(n, seed, style, spec, **kwargs):
                p_a = world.two_class(batch.s_a, batch.s_b, position_bias=False)
                a_wins = rng.random(len(batch)) < p_a
                meter.add(from_p_a(p_a), np.where(a_wins, 0, 1))
                for i in range(len(batch)):
                    win, lose = (batch.response_a[i], batch.response_b[i])[:: 1 if a_wins[i] else -1]
                    row = {"id": f"{style}-{offset + i:07d}"}
                    if style == "pairs":
                        row.update(prompt=batch.prompt[i][0], chosen=win[0], rejected=lose[0])
                    else:
                        row.update(chosen=hh_transcript(batch.prompt[i], win),
                                   rejected=hh_transcript(batch.prompt[i], lose))
                    row["language"] = batch.language[i]
                    handle.write(json.dumps(row, ensure_ascii=False) + "\n")
        summaries[f"pairwise/{style}.jsonl"] = meter.summary()
    return {"files": summaries}
