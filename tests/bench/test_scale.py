"""bench/scale.py's small case end to end (so the 1M-row script cannot rot): every id exactly once at both sizes,
one failure per SIGKILL, the memory ratios and the README rows rendered from its result."""

import json

import pytest

pytestmark = pytest.mark.slow


def test_small_scale_run_labels_every_id_once_and_renders(tmp_path):
    from bench.readme_table import rows_scale
    from bench.scale import main

    out = tmp_path / "scale.json"
    report = main(["--rows", "2000", "--sim-actors", "4", "--sim-kills", "2", "--sim-delay-ms", "5",
                   "--out", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(report))
    for size, rows in (("small", 200), ("large", 2000)):
        run = report[size]
        assert run["prepare"]["rows"] == rows
        for step in ("label_finalize", "fan_out_finalize", "merge"):
            assert run[step]["rows"] == rows
        assert run["label_finalize"]["exactly_once"] and run["fan_out_finalize"]["exactly_once"]
        assert len(run["label"]["kills"]) == 1 and run["label"]["actor_failures"] == 1
        assert len(run["fan_out"]["kills"]) == 2 and run["fan_out"]["actor_failures"] == 2
        assert run["fan_out"]["rows_scored"] == rows and run["fan_out"]["actors"] == 4
    assert set(report["peak_rss_ratio_large_vs_small"]) == {"prepare", "label_driver", "label_finalize",
                                                            "fan_out_driver", "fan_out_finalize", "merge"}
    assert report["planned_run"]["rows_per_s_needed"] > 0 and "load_average_at_end" in report["machine"]
    rows = rows_scale(report)
    assert len(rows) == 3 and all(row[0] == "scale" for row in rows)
    assert "2,000 vs 200 pool rows" in rows[0][1]
