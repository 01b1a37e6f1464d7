"""Parameter counts from dims against the published totals of the models arena_dist trains."""

import pytest

from arena_dist.errors import ConfigError
from arena_dist.planning.models import KNOWN_MODELS, count_params, known_model, lora_params

PUBLISHED_BILLIONS = {  # model cards / safetensors index totals (causal-LM head)
    "meta-llama/Llama-3.3-70B-Instruct": 70.55,
    "Qwen/Qwen2.5-72B-Instruct": 72.71,
    "google/gemma-2-9b-it": 9.24,
    "Qwen/Qwen2.5-14B-Instruct": 14.77,
    "meta-llama/Llama-3.2-1B-Instruct": 1.24,
    "meta-llama/Llama-3.1-8B-Instruct": 8.03,
}


@pytest.mark.parametrize("name,billions", PUBLISHED_BILLIONS.items())
def test_lm_total_matches_published(name, billions):
    assert count_params(KNOWN_MODELS[name], head="lm").total / 1e9 == pytest.approx(billions, abs=0.01)


def test_llama_70b_exact_count():
    # 128256*8192*2 (embed + lm_head) + 80 * (attention 2*8192^2 + 2*8192*1024, MLP 3*8192*28672, 2 norms) + norm
    expected = 2 * 128256 * 8192 + 80 * (2 * 8192**2 + 2 * 8192 * 1024 + 3 * 8192 * 28672 + 2 * 8192) + 8192
    assert count_params(known_model("meta-llama/Llama-3.3-70B-Instruct"), head="lm").total == expected


def test_classifier_head_replaces_lm_head():
    dims = known_model("Qwen/Qwen2.5-72B")
    lm, cls = count_params(dims, "lm"), count_params(dims, "classifier", num_labels=3)
    assert lm.total - cls.total == dims.vocab * dims.hidden - 3 * dims.hidden
    tied = known_model("google/gemma-2-9b")  # tied: the classifier adds a score layer, the LM head adds nothing
    assert count_params(tied, "classifier").total - count_params(tied, "lm").total == 3 * tied.hidden


def test_largest_layer_is_the_embedding_for_big_vocabularies():
    dims = known_model("Qwen/Qwen2.5-72B")
    assert count_params(dims).largest_layer == dims.vocab * dims.hidden


def test_lora_params_count_a_and_b():
    dims = known_model("meta-llama/Llama-3.2-1B")
    # q: 2048->2048, v: 2048->512 (8 kv heads x 64)
    assert lora_params(dims, 8, ["q_proj", "v_proj"]) == 16 * 8 * ((2048 + 2048) + (2048 + 512))


def test_unknown_model_and_module_are_config_errors():
    with pytest.raises(ConfigError, match="model.name"):
        known_model("nope/model")
    with pytest.raises(ConfigError, match="target_modules"):
        lora_params(known_model("google/gemma-2-9b"), 8, ["qkv"])
