"""bitsandbytes loading hook: real 4-bit / 8-bit layers, a trainable layout that eval forwards do not repack, and
gradient checkpointing that leaves the gradients unchanged."""

import pytest
import torch

from arena_dist.models.build import build_model
from arena_dist.models.quant import bnb_config, quantized_layer_counts
from tiny_fixtures import tiny_model_config


def grads(model, ids):
    model.train()
    model(input_ids=ids).logits.sum().backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.slow
def test_4bit_layers_keep_their_layout_and_checkpointing_keeps_gradients():
    cfg = tiny_model_config("gemma2", head="mlp", lora=True, quantization="4bit", head_dropout=0.0)
    model = build_model(cfg, 3, 8)
    assert quantized_layer_counts(model) == {"Linear4bit": 14, "Linear8bitLt": 0}
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ids = torch.randint(10, 300, (2, 12))
    model.eval()
    with torch.inference_mode():
        model(input_ids=ids)  # on AVX512-BF16 CPUs bitsandbytes would repack the weights here
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    # ... which holds on any CPU only because the repack switch is off on every 4-bit layer:
    import bitsandbytes as bnb

    assert not any(m.support_avx512bf16_for_cpu for m in model.modules() if isinstance(m, bnb.nn.Linear4bit))
    plain = grads(model, ids)
    checkpointing = build_model(cfg.model_copy(update={"gradient_checkpointing": True}), 3, 8)
    assert checkpointing.get_base_model().is_activation_checkpointing  # the comparison below is not plain vs plain
    checkpointed = grads(checkpointing, ids)
    assert plain.keys() == checkpointed.keys() and len(plain) > 0
    for name in plain:
        torch.testing.assert_close(plain[name], checkpointed[name])


def test_bnb_configs():
    nf4 = bnb_config("4bit", torch.bfloat16)
    assert nf4.load_in_4bit and nf4.bnb_4bit_quant_type == "nf4" and nf4.bnb_4bit_use_double_quant
    assert nf4.bnb_4bit_compute_dtype == torch.bfloat16 and "score" in nf4.llm_int8_skip_modules
    assert bnb_config("8bit", torch.float32).load_in_8bit
    with pytest.raises(ValueError):
        bnb_config("3bit", torch.float32)
