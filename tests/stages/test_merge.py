"""`arena-dist merge` on tiny 4-bit QLoRA fold exports (distinct random adapters and heads, ranks 4, 4 and 8, on one
seeded base): the averaged adapter's weight deltas are the weighted mean of the folds' B @ A deltas, the reported
|logit difference| is the one predict's loader measures against the folds' ensemble, a merge over the limit exits 2
and writes nothing, exports that do not belong together are refused by path, and `into_base` writes a classifier that
plain transformers reloads to the recorded logits."""

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file

from tiny_fixtures import make_pool_dataset, tiny_model_config

from arena_dist.artefacts import read_artefact
from arena_dist.cli import main
from arena_dist.config import config_dict
from arena_dist.errors import InputError
from arena_dist.formatting.templates import FormatConfig
from arena_dist.models.config import ModelConfig
from arena_dist.models.merge import logits_of
from arena_dist.stages import merge as merge_stage

FORMAT = FormatConfig(template="llama3", max_length=128, label_mode="3class")
CHECK_ROWS = 12
FOLD_RANKS = (4, 4, 8)


def make_fold_export(out_dir: Path, fold: int, rank: int, seed: int, init_seed: int = 0, quantization: str = "4bit",
                     lora: bool = True) -> Path:
    """A student export as the student stage writes it (LoRA on a 4-bit base, the run's format and held-out fold in
    its metadata), with adapters and head moved off their init by a seeded random step: distinct folds."""
    from arena_dist.formatting.tokenizer import load_tokenizer
    from arena_dist.models.build import build_model
    from arena_dist.models.export import save_export

    tokenizer = load_tokenizer("local")
    cfg = tiny_model_config("llama", init_seed=init_seed, quantization=quantization if lora else "none")
    if lora:
        cfg = ModelConfig(**{**cfg.model_dump(), "lora": {"r": rank, "alpha": 2.0 * rank, "dropout": 0.0}})
    model = build_model(cfg, 3, tokenizer.pad_token_id)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.add_(torch.randn(param.shape, generator=generator) * 0.1)
    meta = {"label_mode": "3class", "template": FORMAT.template, "max_length": FORMAT.max_length,
            "format": config_dict(FORMAT), "fold": fold, "created_by": "arena_dist student"}
    return save_export(model.eval(), tokenizer, out_dir, meta)


@pytest.fixture(scope="module")
def folds(tmp_path_factory):
    root = tmp_path_factory.mktemp("merge")
    dataset = make_pool_dataset(root / "dataset", n_rows=40, num_shards=2)
    exports = [make_fold_export(root / f"fold{i}", fold=i % 2, rank=rank, seed=100 + i)
               for i, rank in enumerate(FOLD_RANKS)]
    return {"root": root, "dataset": dataset, "exports": exports}


def check_sequences(dataset: Path) -> tuple[list[str], list[list[int]]]:
    """The check rows, read and encoded here without the stage: the first rows of the folds the exports held out."""
    from arena_dist.data.store import read_records
    from arena_dist.formatting.tokenizer import load_tokenizer
    from arena_dist.train.data import Encoder, Sample

    records = read_records(dataset, "pool", folds=[0, 1])[:CHECK_ROWS]
    encoder = Encoder(load_tokenizer("local"), FORMAT, require_label=False)
    examples = encoder.encode([Sample(r) for r in records], [False] * len(records))
    return [r["id"] for r in records], [e.input_ids for e in examples]


def export_logits(export: Path, sequences) -> np.ndarray:
    """What predict scores with: the export loaded by its loader (a LoRA export on its base quantised as trained)."""
    from arena_dist.predict.infer import load_model

    loaded = load_model(str(export))
    return logits_of(loaded.model, sequences, pad_id=int(loaded.meta["pad_token_id"]))


def config(fx, out: Path, exports=None, **overrides) -> merge_stage.Config:
    return merge_stage.Config.model_validate({
        "exports": [str(e) for e in (exports or fx["exports"])], "output_dir": str(out), "max_logit_diff": 10.0,
        "check_rows": {"dataset_dir": str(fx["dataset"]), "split": "pool", "max_rows": CHECK_ROWS}, **overrides})


def lora_deltas(export: Path) -> dict:
    """module -> s * B @ A from the saved adapter (s = lora_alpha / r, as PEFT scales it)."""
    adapter = json.loads((export / "adapter_config.json").read_text())
    scaling = adapter["lora_alpha"] / adapter["r"]
    tensors = load_file(str(export / "adapter_model.safetensors"))
    return {key.removesuffix(".lora_A.weight"): scaling * tensors[key.replace("lora_A", "lora_B")] @ tensors[key]
            for key in tensors if key.endswith(".lora_A.weight")}


def head_weights(export: Path) -> dict:
    tensors = load_file(str(export / "adapter_model.safetensors"))
    return {key: value for key, value in tensors.items() if "lora_" not in key}


def test_one_export_averaged_is_the_export_itself(folds, tmp_path):
    summary = merge_stage.run(config(folds, tmp_path / "out", exports=folds["exports"][:1]))
    merged = tmp_path / "out" / "export"
    assert summary["exports"] == 1 and summary["rows"] == CHECK_ROWS
    assert summary["max_abs_logit_diff"] == 0.0  # the same adapter on the same base
    saved, original = load_file(str(merged / "adapter_model.safetensors")), load_file(
        str(folds["exports"][0] / "adapter_model.safetensors"))
    assert saved.keys() == original.keys() and all(torch.equal(saved[k], original[k]) for k in saved)
    _, sequences = check_sequences(folds["dataset"])
    np.testing.assert_allclose(export_logits(merged, sequences), export_logits(folds["exports"][0], sequences),
                               rtol=0, atol=1e-6)


def test_three_folds_average_their_deltas_and_report_the_difference_to_their_ensemble(folds, tmp_path):
    raw_weights = [5.0, 3.0, 2.0]
    weights = [w / sum(raw_weights) for w in raw_weights]
    summary = merge_stage.run(config(folds, tmp_path / "out", weights=raw_weights))
    merged = tmp_path / "out" / "export"

    # the adapter: exactly the weighted mean of the folds' weight deltas (not of A and B), of rank 4 + 4 + 8
    fold_deltas = [lora_deltas(e) for e in folds["exports"]]
    merged_deltas = lora_deltas(merged)
    assert json.loads((merged / "adapter_config.json").read_text())["r"] == sum(FOLD_RANKS)
    assert merged_deltas.keys() == fold_deltas[0].keys() and len(merged_deltas) == 14  # 2 layers x 7 modules
    for key, delta in merged_deltas.items():
        expected = sum(w * d[key] for w, d in zip(weights, fold_deltas))
        assert float(expected.abs().max()) > 1e-3  # the folds' deltas are not zero
        torch.testing.assert_close(delta, expected, rtol=0, atol=1e-6)
    # the fully trained head: the weighted mean of the folds' heads
    fold_heads = [head_weights(e) for e in folds["exports"]]
    for key, value in head_weights(merged).items():
        torch.testing.assert_close(value, sum(w * h[key] for w, h in zip(weights, fold_heads)), rtol=0, atol=1e-6)

    # the reported difference is the one measured here: merged export vs the weighted mean of the folds' logits,
    # every model loaded as predict loads it
    ids, sequences = check_sequences(folds["dataset"])
    ensemble = sum(w * export_logits(e, sequences) for w, e in zip(weights, folds["exports"]))
    diff = np.abs(export_logits(merged, sequences) - ensemble)
    assert diff.max() > 1e-3, "folds too alike to tell a merge from an ensemble"
    assert summary["max_abs_logit_diff"] == pytest.approx(diff.max(), abs=1e-5)
    assert summary["mean_abs_logit_diff"] == pytest.approx(diff.mean(), abs=1e-5)
    print(f"3-fold average: max |logit diff| {diff.max():.4f}, mean {diff.mean():.4f}, "
          f"fold spread {summary['fold_spread_max_abs_logit_diff']:.4f}")
    record = read_artefact(tmp_path / "out")
    assert record.status == "succeeded" and record.headline == "max_abs_logit_diff" and record.rows == CHECK_ROWS
    assert record.metrics["max_abs_logit_diff"] == summary["max_abs_logit_diff"]
    meta = json.loads((merged / "arena_dist.json").read_text())
    assert meta["merge_check"]["max_abs_logit_diff"] == summary["max_abs_logit_diff"]
    assert meta["quantization"] == "4bit" and meta["lora"] and meta["merge_weights"] == pytest.approx(weights)
    assert [m["fold"] for m in meta["merged_exports"]] == [0, 1, 0]
    check = json.loads((tmp_path / "out" / "merge_check.json").read_text())
    assert check["ids"] == ids
    np.testing.assert_allclose(check["ensemble"], ensemble, rtol=0, atol=1e-5)


def test_a_merge_over_the_limit_exits_2_and_writes_nothing(folds, tmp_path, capsys):
    out = tmp_path / "out"
    data = config_dict(config(folds, out, max_logit_diff=1e-3))
    config_file = tmp_path / "merge.yaml"
    config_file.write_text(yaml.safe_dump(data))
    assert main(["merge", "--config", str(config_file)]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]  # after transformers' loading bars
    assert err.startswith("arena-dist merge: merge refused") and "max_logit_diff = 0.001" in err, err
    measured = re.search(r"logits = ([0-9.e+-]+) > max_logit_diff", err)
    assert measured and float(measured.group(1)) > 1e-3, err
    assert not out.exists()


@pytest.mark.parametrize("kind", ["other base", "8-bit", "2-class", "full model"])
def test_exports_that_do_not_belong_together_are_refused_by_path(folds, tmp_path, kind):
    odd = tmp_path / "odd"
    if kind == "other base":
        make_fold_export(odd, fold=1, rank=4, seed=7, init_seed=5)
        match = "base"
    elif kind == "full model":
        make_fold_export(odd, fold=1, rank=4, seed=7, lora=False)
        match = "not a LoRA export"
    else:
        shutil.copytree(folds["exports"][1], odd)
        meta = json.loads((odd / "arena_dist.json").read_text())
        key, value = ("quantization", "8bit") if kind == "8-bit" else ("label_mode", "2class")
        meta[key] = value
        (odd / "arena_dist.json").write_text(json.dumps(meta))
        match = key
    with pytest.raises(InputError, match=match) as err:
        merge_stage.run(config(folds, tmp_path / "out", exports=[folds["exports"][0], odd]))
    assert f"exports[1] {odd}" in str(err.value)
    assert not (tmp_path / "out").exists()


def test_into_base_writes_a_classifier_plain_transformers_reloads_to_the_recorded_logits(folds, tmp_path):
    from transformers import AutoModelForSequenceClassification

    summary = merge_stage.run(config(folds, tmp_path / "out", mode="into_base"))
    merged = tmp_path / "out" / "export"
    meta = json.loads((merged / "arena_dist.json").read_text())
    assert not meta["lora"] and meta["quantization"] == "none" and not (merged / "adapter_config.json").exists()
    check = json.loads((tmp_path / "out" / "merge_check.json").read_text())
    _, sequences = check_sequences(folds["dataset"])
    plain = AutoModelForSequenceClassification.from_pretrained(str(merged)).eval()
    np.testing.assert_allclose(logits_of(plain, sequences, pad_id=int(meta["pad_token_id"])), check["merged"],
                               rtol=0, atol=1e-5)
    # the recorded numbers are those of the recorded logits; the merge into the weights itself is exact
    diff = np.abs(np.array(check["merged"]) - np.array(check["ensemble"]))
    assert summary["max_abs_logit_diff"] == pytest.approx(diff.max(), abs=1e-9)
    assert summary["max_abs_logit_diff_vs_unmerged_full_precision"] < 1e-4
    print(f"3-fold into_base: max |logit diff| {diff.max():.4f}, mean {diff.mean():.4f}, merge vs unmerged "
          f"full precision {summary['max_abs_logit_diff_vs_unmerged_full_precision']:.2e}")


def test_a_foreign_output_dir_is_refused_before_any_model_is_loaded(folds, tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("mine\n")
    config_file = tmp_path / "merge.yaml"
    config_file.write_text(yaml.safe_dump(config_dict(config(folds, out))))
    assert main(["merge", "--config", str(config_file)]) == 2
    assert "did not write" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
