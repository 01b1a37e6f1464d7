import pytest

from arena_dist.distill.data import adapt_soft_label, mix_examples


def rec(i, label, fold=0):
    return {"id": f"s/{i}", "source": "s", "prompt": ["p"], "response_a": ["a"], "response_b": ["b"],
            "model_a": None, "model_b": None, "language": "en", "label": label, "fold": fold}


def test_mix_joins_soft_labels_by_id_and_counts_add_up():
    train = [rec(0, 0), rec(1, 2), rec(2, 1)]
    pool = [rec(10, None), rec(11, None), rec(12, None)]
    soft = {"s/0": [0.6, 0.3, 0.1], "s/1": [0.2, 0.2, 0.6], "s/10": [0.1, 0.8, 0.1], "s/12": [0.3, 0.3, 0.4]}
    examples, counts = mix_examples(train, pool, soft, 3, soft_on_hard_rows=True)
    assert [e.record["id"] for e in examples] == ["s/0", "s/1", "s/2", "s/10", "s/12"]
    assert examples[0].soft == pytest.approx([0.6, 0.3, 0.1]) and examples[2].soft is None
    assert examples[3].record["label"] is None and examples[3].soft == pytest.approx([0.1, 0.8, 0.1])
    assert counts.pool_without_soft_label == 1 and counts.used == 5
    assert counts.hard_rows == 3 and counts.soft_rows == 4

    examples, counts = mix_examples(train, pool, soft, 3, soft_on_hard_rows=False)
    assert all(e.soft is None for e in examples[:3])


def test_two_class_student_adapts_teacher_and_handles_ties():
    train = [rec(0, 0), rec(1, 2), rec(2, 2)]
    soft = {"s/1": [0.2, 0.2, 0.6]}
    examples, counts = mix_examples(train, [], soft, 2, soft_on_hard_rows=True)
    assert counts.ties_dropped_2class == 1  # s/2: a tie without a soft label
    tie_row = next(e for e in examples if e.record["id"] == "s/1")
    assert tie_row.record["label"] is None and tie_row.soft == pytest.approx([0.5, 0.5])
    assert adapt_soft_label([0.3, 0.7], 3) == pytest.approx([0.3, 0.7, 0.0])
    with pytest.raises(ValueError):
        adapt_soft_label([0.5, 0.5, 0.0, 0.0], 3)
