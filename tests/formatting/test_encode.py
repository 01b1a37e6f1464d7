"""encode_records: swap symmetry, batch == one by one, labels follow the swap."""

import random

import pytest

from arena_dist.data.records import swap_record
from arena_dist.formatting.encode import EncodedRow, encode_record, encode_records, render_text
from arena_dist.formatting.templates import FormatConfig
from arena_dist.formatting.tokenizer import load_tokenizer

WORDS = "one two three four five six seven eight nine ten река 山 ok! why? sure,".split()


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer("local")


def random_records(seed, n=40):
    rng = random.Random(seed)
    text = lambda: " ".join(rng.choice(WORDS) for _ in range(rng.choice([0, 3, 40, 400])))  # noqa: E731
    out = []
    for i in range(n):
        turns = rng.randint(1, 3)
        out.append({"id": f"s/{i}", "source": "s", "prompt": [text() for _ in range(turns)],
                    "response_a": [text() for _ in range(turns)], "response_b": [text() for _ in range(turns)],
                    "model_a": "m1", "model_b": "m2", "language": "en", "label": rng.choice([0, 1, 2, None]),
                    "fold": i % 3})
    return out


@pytest.mark.parametrize("template", ["llama3", "chatml", "gemma2"])
def test_swap_symmetry(tok, template):
    records = random_records(1)
    fmt = FormatConfig(template=template, max_length=200)
    plain = encode_records(records, tok, fmt)
    swapped = encode_records(records, tok, fmt, swap=True)
    of_swapped = encode_records([swap_record(r) for r in records], tok, fmt)
    twice = encode_records([swap_record(r) for r in records], tok, fmt, swap=True)
    for record, p, s, o, t in zip(records, plain, swapped, of_swapped, twice):
        assert swap_record(swap_record(record)) == record
        assert s.input_ids == o.input_ids  # swapped encoding == encoding of the swapped record
        assert t.input_ids == p.input_ids and t.label == p.label  # swapping twice is the identity
        assert s.swapped and not p.swapped
        expected = {0: 1, 1: 0, 2: 2, None: None}[record["label"]]
        assert p.label == record["label"] and s.label == expected
        if record["response_a"][-1] != record["response_b"][-1]:  # the last turn is always kept
            assert s.input_ids != p.input_ids


def test_swap_moves_the_texts(tok):
    record = random_records(2, 1)[0] | {"prompt": ["q"], "response_a": ["first"], "response_b": ["second"]}
    text = render_text(record, FormatConfig(), tok, swap=True)
    assert "##Model A\nsecond\n##Model B\nfirst\n" in text


def test_batch_equals_one_by_one(tok):
    records = random_records(3, 25)
    fmt = FormatConfig(template="gemma2", max_length=150, truncation="left")
    extras = [None if i % 2 else f"model_a: m{i}" for i in range(len(records))]
    batch = encode_records(records, tok, fmt, extra_texts=extras)
    single = [encode_record(r, tok, fmt, extra_text=e) for r, e in zip(records, extras)]
    assert batch == single
    assert all(isinstance(row, EncodedRow) and row.id == r["id"] for row, r in zip(batch, records))
    assert encode_records([], tok, fmt) == []
