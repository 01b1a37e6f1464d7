"""Model states agree with DeepSpeed's own estimator; activations, quantised weights and the max micro-batch."""

import contextlib
import io
import re

import pytest

from arena_dist.errors import ConfigError
from arena_dist.planning.memory import (
    GIB, activation_bytes, adapter_states, layer_activation_bytes, deepspeed_zero2_states, deepspeed_zero3_states, full_finetune_states,
    plan_memory, quantised_bytes_per_param,
)
from arena_dist.planning.models import LINEAR_MODULES, ModelDims, count_params, known_model

MODELS = ["meta-llama/Llama-3.3-70B-Instruct", "Qwen/Qwen2.5-72B-Instruct", "google/gemma-2-9b-it",
          "Qwen/Qwen2.5-14B-Instruct"]
LAYOUTS = [(8, 1), (8, 2), (8, 4), (8, 8)]
# (offload_optimizer, offload_param) in DeepSpeed's terms -> the planner's offload mode
MODES = {(True, True): "optimizer+params", (True, False): "optimizer", (False, False): "none"}


def _parse_all_cold(text: str) -> dict:
    """{offload mode: (cpu GB, gpu GB)} from the zero_init=1 rows that estimate_..._all_cold prints."""
    rows = {}
    for cpu, gpu, param, opt in re.findall(
            r"([\d.]+)GB \|\s+([\d.]+)GB \| offload_param=([\w.]+)\s*, offload_optimizer=([\w.]+)\s*, zero_init=1",
            text):
        # the device prints as `cpu` or, on newer Pythons, as `OffloadDeviceEnum.cpu`
        rows[MODES[(opt.endswith("cpu"), param.endswith("cpu"))]] = (float(cpu), float(gpu))
    return rows


@pytest.mark.slow  # imports deepspeed (seconds); the comparisons themselves are instant
@pytest.mark.parametrize("name", MODELS)
def test_zero3_model_states_agree_with_deepspeed(name):
    from deepspeed.runtime.zero.stage3 import (
        estimate_zero3_model_states_mem_needs, estimate_zero3_model_states_mem_needs_all_cold,
    )

    params = count_params(known_model(name), head="classifier")
    for gpus_per_node, nodes in LAYOUTS:
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            estimate_zero3_model_states_mem_needs_all_cold(params.total, params.largest_layer, gpus_per_node, nodes)
        table = _parse_all_cold(printed.getvalue())
        assert set(table) == set(MODES.values())
        for (cpu_offload, param_offload), mode in MODES.items():
            ours = deepspeed_zero3_states(params.total, params.largest_layer, gpus_per_node, nodes, mode)
            ds_cpu, ds_gpu, _ = estimate_zero3_model_states_mem_needs(
                params.total, params.largest_layer, gpus_per_node, nodes, cpu_offload=cpu_offload,
                cpu_offload_params=param_offload, zero_init=True)
            assert (ours.cpu_bytes, ours.gpu_bytes) == (ds_cpu, ds_gpu), (name, nodes, mode)
            # and the printed table (GiB, 2 decimals) shows the same numbers
            assert table[mode] == (round(ds_cpu / GIB, 2), round(ds_gpu / GIB, 2))
        planned = full_finetune_states(params, 3, "none", gpus_per_node, nodes)
        assert round(planned.gpu_bytes / GIB, 2) == table["none"][1]


@pytest.mark.slow
@pytest.mark.parametrize("name", MODELS)
def test_zero2_model_states_agree_with_deepspeed(name):
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

    psi = count_params(known_model(name)).total
    for gpus_per_node, nodes in LAYOUTS:
        for offload in (True, False):
            ours = deepspeed_zero2_states(psi, gpus_per_node, nodes, "optimizer" if offload else "none")
            assert (ours.cpu_bytes, ours.gpu_bytes) == estimate_zero2_model_states_mem_needs(
                psi, gpus_per_node, nodes, cpu_offload=offload)


def test_zero_stages_shrink_states_in_order_and_zero3_scales_as_one_over_n():
    params = count_params(known_model("meta-llama/Llama-3.3-70B"), "classifier")
    per_stage = [full_finetune_states(params, stage, "none", 8, 4).gpu_bytes for stage in range(4)]
    assert per_stage == sorted(per_stage, reverse=True)
    assert per_stage[0] == 16 * params.total  # ZeRO paper, stage 0: 2 + 2 + 12 bytes per parameter
    fixed = 4 * params.largest_layer
    two, eight = (full_finetune_states(params, 3, "none", 8, n).gpu_bytes - fixed for n in (2, 8))
    assert two / eight == pytest.approx(4.0, rel=1e-6)


def test_param_offload_needs_zero3():
    params = count_params(known_model("google/gemma-2-9b"))
    with pytest.raises(ConfigError, match="zero_stage 3"):
        full_finetune_states(params, 2, "optimizer+params", 8, 1)


def test_quantised_base_bytes():
    assert quantised_bytes_per_param(4, double_quant=False) == pytest.approx(0.5 + 4 / 64)
    assert quantised_bytes_per_param(4, double_quant=True) == pytest.approx(0.5 + 1 / 64 + 4 / (64 * 256))
    dims = known_model("google/gemma-2-9b")
    params = count_params(dims, "classifier")
    kwargs = dict(lora_r=16, target_modules=list(LINEAR_MODULES), double_quant=True, zero_stage=0, offload="none",
                  gpus_per_node=8, nodes=1, head="classifier")
    q4, d4 = adapter_states(dims, params, "qlora", quant_bits=4, **kwargs)
    q8, d8 = adapter_states(dims, params, "qlora", quant_bits=8, **kwargs)
    lora, _ = adapter_states(dims, params, "lora", quant_bits=4, **kwargs)
    non_linear = params.total - params.decoder_linear - params.head
    assert d4["frozen_base_bytes"] == pytest.approx(params.decoder_linear * 0.5159 + 2 * non_linear, rel=1e-3)
    assert q4.gpu_bytes < q8.gpu_bytes < lora.gpu_bytes
    # 54M adapters (r=16 on all 7 linears of 42 layers) carry 16 B/param of Adam states
    assert d4["lora_params"] == 42 * 16 * sum(i + o for i, o in [(3584, 4096), (3584, 2048), (3584, 2048),
                                                                (4096, 3584), (3584, 14336), (3584, 14336),
                                                                (14336, 3584)])
    assert d4["trainable_states_gpu_bytes"] == 16 * d4["trainable_params"]


def test_activations_formula_and_checkpointing():
    dims = known_model("meta-llama/Llama-3.3-70B")
    s, h = 4096, dims.hidden
    per_layer = layer_activation_bytes(dims, s, 1)
    assert per_layer == s * (2 * (8 * h + 4) + 4 * dims.q_dim + 4 * dims.kv_dim + 4 * dims.heads
                             + 8 * dims.intermediate)
    head = s * (8 * h + 4)
    full = activation_bytes(dims, s, 1, checkpointing=False)
    assert full == 80 * per_layer + head
    ckpt = activation_bytes(dims, s, 1, checkpointing=True)
    assert ckpt == 80 * 2 * s * h + per_layer + head
    assert full / ckpt > 10
    assert activation_bytes(dims, s, 3, True) == 3 * ckpt  # linear in the micro-batch
    eager = activation_bytes(dims, s, 1, False, attention="eager")
    assert eager - full == 80 * s * (4 * dims.q_dim - 4 * dims.kv_dim - 4 * dims.heads + 6 * dims.heads * s)


def _saved_activation_bytes(model, input_ids) -> int:
    """Bytes of the distinct non-parameter storages autograd saves during one forward pass."""
    import torch

    parameters = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in parameters and tensor.is_floating_point():
            saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        model(input_ids=input_ids).logits.sum()
    return sum(saved.values())


@pytest.mark.slow  # imports transformers and torch (seconds), then runs in well under a second
@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_activation_formula_matches_what_autograd_saves(attention):
    """A real HF Llama classifier in bf16: the formula agrees with the saved tensors within 1 % (the rest is the
    rotary cos/sin tables, shared by all layers)."""
    import torch
    from transformers import LlamaConfig, LlamaForSequenceClassification

    dims_kwargs = dict(layers=2, hidden=64, heads=4, kv_heads=2, intermediate=176, vocab=1000)
    config = LlamaConfig(hidden_size=64, intermediate_size=176, num_attention_heads=4, num_key_value_heads=2,
                         num_hidden_layers=2, vocab_size=1000, num_labels=3, pad_token_id=0,
                         attn_implementation=attention)
    torch.manual_seed(0)
    model = LlamaForSequenceClassification(config).to(torch.bfloat16).train()
    dims = ModelDims(**dims_kwargs)
    seq, batch = 256, 2
    input_ids = torch.randint(1, 1000, (batch, seq))
    kind = "flash" if attention == "sdpa" else "eager"
    measured = _saved_activation_bytes(model, input_ids)
    assert measured == pytest.approx(activation_bytes(dims, seq, batch, False, kind), rel=0.01)
    # checkpointed: the forward saves only each layer's input; the formula adds the layer recomputed in backward
    model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    measured = _saved_activation_bytes(model, input_ids)
    expected = activation_bytes(dims, seq, batch, True, kind) - layer_activation_bytes(dims, seq, batch, kind)
    assert measured == pytest.approx(expected, rel=0.01)


def test_max_micro_batch_is_the_largest_that_fits():
    dims = known_model("meta-llama/Llama-3.3-70B")
    params = count_params(dims, "classifier")
    states = full_finetune_states(params, 3, "none", 8, 4)
    per_sample = activation_bytes(dims, 4096, 1, True)
    plan = plan_memory(states, per_sample, 1, 80.0, 4.0)
    assert plan.fits and plan.max_micro_batch >= 1
    at_max = plan_memory(states, per_sample, plan.max_micro_batch, 80.0, 4.0)
    above = plan_memory(states, per_sample, plan.max_micro_batch + 1, 80.0, 4.0)
    assert at_max.fits and not above.fits
    # on 2 nodes the 70B full fine-tune does not fit without offload: 18 B x 69.5B / 16 GPUs alone is ~73 GiB
    two_nodes = plan_memory(full_finetune_states(params, 3, "none", 8, 2), per_sample, 1, 80.0, 4.0)
    assert not two_nodes.fits and two_nodes.max_micro_batch == 0
