"""Export -> reload (plain transformers for linear heads, load_export for all) gives identical logits."""

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForSequenceClassification

from arena_dist.errors import InputError
from arena_dist.models.build import build_model
from arena_dist.models.export import load_export, read_export_meta, save_export
from tiny_fixtures import TINY_ARCHS, tiny_model_config

META = {"label_mode": "3way", "template": "plain", "max_length": 64}


@pytest.fixture(scope="module")
def tokenizer():
    from arena_dist.formatting.tokenizer import load_tokenizer

    return load_tokenizer("local")


def inputs(tokenizer):
    enc = tokenizer(["which answer is better?", "a longer prompt with a few more words in it"],
                    padding=True, return_tensors="pt")
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}


def perturb(model):
    """Move every trainable weight off its init so a reload that silently re-initialises something is caught."""
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.add_(torch.randn(param.shape, generator=gen) * 0.05)


@pytest.mark.parametrize("arch", TINY_ARCHS)
@pytest.mark.parametrize("head", ["linear", "mlp"])
@pytest.mark.parametrize("lora", [False, True])
def test_export_roundtrip(tmp_path, tokenizer, arch, head, lora):
    model = build_model(tiny_model_config(arch, head=head, lora=lora), 3, tokenizer.pad_token_id).eval()
    perturb(model)
    batch = inputs(tokenizer)
    with torch.no_grad():
        expected = model(**batch).logits
    out = save_export(model, tokenizer, tmp_path / "export", META)

    meta = read_export_meta(out)
    assert meta["head"] == head and meta["lora"] == lora and meta["num_labels"] == 3
    assert meta["max_length"] == 64 and meta["base"]["arch"] == arch
    assert not list(out.glob("*.bin")) and not list(out.glob("*.pt"))

    reloaded, tok2, meta2 = load_export(out)
    assert tok2 is not None and tok2("hi")["input_ids"] == tokenizer("hi")["input_ids"]
    with torch.no_grad():
        assert torch.equal(reloaded(**batch).logits, expected)

    if lora:
        with safe_open(str(out / "adapter_model.safetensors"), framework="pt") as handle:
            keys = list(handle.keys())
            lora_b = [k for k in keys if "lora_B" in k]
            assert lora_b and any(handle.get_tensor(k).abs().sum() > 0 for k in lora_b)  # not an empty stub
            assert any("score" in k for k in keys)
    elif head == "linear":
        plain = AutoModelForSequenceClassification.from_pretrained(
            str(out), attn_implementation=meta["attn_implementation"]).eval()
        with torch.no_grad():
            assert torch.equal(plain(**batch).logits, expected)


def test_missing_meta_keys(tmp_path, tokenizer):
    model = build_model(tiny_model_config("llama"), 2, tokenizer.pad_token_id)
    with pytest.raises(InputError, match="max_length"):
        save_export(model, tokenizer, tmp_path / "e", {"label_mode": "2way", "template": "plain"})
    assert not (tmp_path / "e").exists()


def test_not_an_export(tmp_path):
    with pytest.raises(InputError, match="arena_dist.json"):
        read_export_meta(tmp_path)
    (tmp_path / "arena_dist.json").write_text("{bad")
    with pytest.raises(InputError, match="unreadable"):
        read_export_meta(tmp_path)


@pytest.fixture(scope="module")
def tiny_exports(tmp_path_factory):
    """A plain and a LoRA tiny teacher export, copied per test (ship_code edits them)."""
    from tiny_fixtures import make_teacher_export

    root = tmp_path_factory.mktemp("exports")
    return {"plain": make_teacher_export(root / "plain", max_length=64),
            "lora": make_teacher_export(root / "lora", max_length=64, lora=True)}


def copy_export(tiny_exports, kind, tmp_path):
    import shutil

    return Path(shutil.copytree(tiny_exports[kind], tmp_path / f"{kind}-export"))


@pytest.mark.parametrize("kind, folder, config_file", [("plain", ".", "config.json"),
                                                       ("plain", ".", "tokenizer_config.json"),
                                                       ("lora", "base", "config.json")])
def test_export_that_ships_code_is_refused_before_it_runs(tiny_exports, tmp_path, ship_code, kind, folder,
                                                          config_file):
    # The export's own metadata claims trust_remote_code (ship_code sets it): only the caller's setting counts.
    export = copy_export(tiny_exports, kind, tmp_path)
    marker = tmp_path / "imported.txt"
    ship_code(export / folder, marker, config_file)
    meta = json.loads((export / "arena_dist.json").read_text())
    meta["model_config"]["trust_remote_code"] = True
    (export / "arena_dist.json").write_text(json.dumps(meta))
    with pytest.raises(InputError) as caught:
        load_export(export)
    message = str(caught.value)
    assert str(export) in message and "trust_remote_code: true" in message and "\n" not in message
    assert str(export / folder / config_file) in message
    assert not marker.exists()


def test_attention_kernel_comes_from_a_fixed_list(tiny_exports, tmp_path):
    """transformers also accepts a hub kernel id as attn_implementation (fetched and run): not from an export."""
    export = copy_export(tiny_exports, "plain", tmp_path)
    meta = json.loads((export / "arena_dist.json").read_text())
    meta["attn_implementation"] = "kernels-community/some-kernel"
    (export / "arena_dist.json").write_text(json.dumps(meta))
    with pytest.raises(InputError, match="attn_implementation 'kernels-community/some-kernel'"):
        load_export(export)


@pytest.fixture
def lora_export_on_a_checkpoint(tmp_path):
    """A LoRA export (MLP head) whose base is a hub-layout causal-LM checkpoint, recorded by the path the config gave."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from hub_checkpoints import build_checkpoint, build_tokenizer

    from arena_dist.models.config import ModelConfig

    base = build_checkpoint(tmp_path / "hub", "llama", "causal_lm")
    cfg = ModelConfig(name_or_path=str(base), head="mlp", lora={"r": 4, "alpha": 8, "dropout": 0.0})
    model = build_model(cfg, 3, 0)
    perturb(model)
    tokenizer = build_tokenizer("llama")
    tokenizer.pad_token = "<|finetune_right_pad_id|>"
    meta = {"label_mode": "3class", "template": "llama3", "max_length": 64}
    save_export(model, tokenizer, tmp_path / "export", meta)
    ids = {"input_ids": torch.tensor([[5, 9, 30, 7], [11, 3, 8, 40]])}
    with torch.no_grad():
        expected = model.eval()(**ids).logits
    return base, tmp_path / "export", ids, expected


def test_a_moved_lora_base_is_found_through_base_path(lora_export_on_a_checkpoint, tmp_path, capfd, caplog):
    import logging
    import shutil

    base, export, ids, expected = lora_export_on_a_checkpoint
    assert read_export_meta(export)["base"] == {"name_or_path": str(base)}  # as the config gave it
    moved = tmp_path / "elsewhere" / "base"
    shutil.move(str(base), str(moved))
    with pytest.raises(InputError, match="base model .*is not there; set base_path to") as err:
        load_export(export)
    assert str(base) in str(err.value)
    with pytest.raises(InputError, match="is not a folder"):
        load_export(export, base_path=tmp_path / "nowhere")
    capfd.readouterr()
    caplog.clear()
    with caplog.at_level(logging.INFO):
        model, _, _ = load_export(export, base_path=moved)
    console = capfd.readouterr()
    with torch.no_grad():
        assert torch.equal(model(**ids).logits, expected)
    # the head comes from the adapter: transformers' "score MISSING / newly initialized" report would be false
    logged = console.out + console.err + "".join(r.getMessage() for r in caplog.records)
    for alarm in ("MISSING", "newly initialized", "LOAD REPORT"):
        assert alarm not in logged
    from arena_dist.label.scoring import TeacherScorer  # what each label actor loads (teachers[i].base_path)

    with torch.no_grad():
        assert torch.equal(TeacherScorer(str(export), base_path=str(moved)).model(**ids).logits, expected)


def test_8bit_loading_logs_no_cast_line_per_forward(lora_export_on_a_checkpoint, caplog):
    import logging

    from arena_dist.predict.infer import load_model

    _, export, ids, _ = lora_export_on_a_checkpoint
    loaded = load_model(str(export), quantization="8bit")
    with caplog.at_level(logging.WARNING):
        with torch.no_grad():
            for _ in range(3):
                loaded.model(**ids)
    assert not [r for r in caplog.records if "MatMul8bitLt" in r.getMessage()]


@pytest.mark.parametrize("arch,kernel", [("llama", "sdpa"), ("gemma2", "eager"), ("qwen2", "eager")])
def test_the_kernel_trained_with_is_recorded_and_used_at_load(tmp_path, arch, kernel):
    """sdpa asked for everywhere but eager set for qwen2; Gemma-2 ran eager (no soft-capping in sdpa): the export
    records what ran, and the reload runs it."""
    requested = "eager" if arch == "qwen2" else "sdpa"
    model = build_model(tiny_model_config(arch, vocab_size=128, attn_implementation=requested), 3, 0)
    save_export(model, None, tmp_path / "export", META)
    assert read_export_meta(tmp_path / "export")["attn_implementation"] == kernel
    loaded, _, _ = load_export(tmp_path / "export")
    assert loaded.config._attn_implementation == kernel


def test_an_export_trained_with_flash_attention_needs_flash_attn_to_load(tmp_path):
    """flash-attn is not installed here: loading an export that recorded flash_attention_2 stops with one line naming
    the export, before any weights are read (another kernel would not reproduce its logits)."""
    import json

    save_export(build_model(tiny_model_config("llama", vocab_size=128), 3, 0), None, tmp_path / "export", META)
    meta_file = tmp_path / "export" / "arena_dist.json"
    meta_file.write_text(json.dumps({**json.loads(meta_file.read_text()), "attn_implementation": "flash_attention_2"}))
    with pytest.raises(InputError, match=r"export: the export was trained with flash_attention_2 .* not installed"):
        load_export(tmp_path / "export")
