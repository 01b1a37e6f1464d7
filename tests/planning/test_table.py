"""The README capacity table in docs/cluster_cloud.md is the planner's output, not hand-typed numbers."""

from pathlib import Path

import pytest

from arena_dist.planning.table import markdown_table, table_rows

DOC = Path(__file__).resolve().parents[2] / "docs" / "cluster_cloud.md"


def test_doc_table_is_current():
    assert markdown_table() in DOC.read_text(), "regenerate: python -m arena_dist.planning.table"


def test_table_shape_and_what_it_says():
    rows = table_rows()
    assert len(rows) == 2 * 2 * 3
    by_key = {(r["model"], r["nodes"], r["offload"]): r for r in rows}
    # 70B/72B full fine-tune on 2 nodes needs optimizer offload; 4 nodes fit without it
    assert not by_key[("Llama-3.3-70B-Instruct", 2, "none")]["fits"]
    assert by_key[("Llama-3.3-70B-Instruct", 4, "none")]["fits"]
    assert by_key[("Qwen2.5-72B-Instruct", 2, "optimizer")]["fits"]
    # twice the nodes, half the epoch
    eight, four = (by_key[("Qwen2.5-72B-Instruct", n, "none")]["hours"] for n in (8, 4))
    assert eight * 2 == pytest.approx(four)
