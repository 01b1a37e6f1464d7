"""Padding of token-budget batching on the synthetic pool, encoded exactly as the label stage encodes it."""

import pytest

from arena_dist.label.batching import fixed_size_batches, padding_stats, token_budget_batches

pytestmark = pytest.mark.slow  # builds a dataset and tokenises 1,200 sequences (a few seconds)


def test_padding_ratio_on_synthetic_pool(tmp_path):
    from arena_dist.data.store import iter_records
    from arena_dist.formatting.encode import encode_records
    from arena_dist.formatting.templates import FormatConfig
    from arena_dist.formatting.tokenizer import load_tokenizer
    from tiny_fixtures import make_pool_dataset

    records = list(iter_records(make_pool_dataset(tmp_path / "pool", n_rows=600, num_shards=1), "pool"))
    tokenizer, fmt = load_tokenizer("local"), FormatConfig(max_length=1024)
    # one shard's work: both orders of every row, as `score_records` batches them
    lengths = [len(row.input_ids) for swap in (False, True) for row in encode_records(records, tokenizer, fmt, swap=swap)]
    assert max(lengths) > 2 * min(lengths)  # the pool really has varied lengths
    budget = padding_stats(lengths, token_budget_batches(lengths, max_tokens=8192))
    naive = padding_stats(lengths, fixed_size_batches(len(lengths), 16))
    assert budget.ratio <= 1.1, budget.as_dict()
    assert naive.ratio >= 1.5, naive.as_dict()  # what fixed-size batches in dataset order pay
