"""Chat "generator" models of the synthetic arena world, for building a pool with `arena-dist generate`.

A pool built by `generate` is only worth distilling on if the synthetic preference model can still judge it: its
labels come from the quality words a response contains (arena_dist.data.synth). A random-init causal LM over a real
tokenizer writes sub-word gibberish that holds almost no quality word, so every generated pair would be a tie of
lengths. Each model written here therefore speaks only the synthetic world's words: a word-level tokenizer whose
vocabulary is a set of quality words plus English filler, with the Llama-3 chat template and special tokens. The
model itself is an ordinary random-init `LlamaForCausalLM` saved in the hub's layout (safetensors, config,
generation config, tokenizer), so `generate` loads it by path exactly as it loads a hub chat model.

The models differ in "skill" the way synth's generating models do: the strong one's vocabulary holds every positive
quality word and few negative ones, the weak one the reverse, the even one all of them; so the strong model wins
most of its comparisons, and the label still depends on the text only (`synth.true_probabilities` reads it).

transformers / tokenizers / torch are imported inside the writer: `synth` itself stays numpy + pyarrow.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from arena_dist.data.synth import FILLER, QUALITY_NEGATIVE, QUALITY_POSITIVE
from arena_dist.io import atomic_directory

# The Llama-3 family's own special tokens and chat layout.
BOS, EOS, PAD = "<|begin_of_text|>", "<|eot_id|>", "<|finetune_right_pad_id|>"
HEADER_START, HEADER_END, UNK = "<|start_header_id|>", "<|end_header_id|>", "<|reserved_special_token_0|>"
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}<|start_header_id|>{{ message['role'] }}<|end_header_id|>\n\n"
    "{{ message['content'] | trim }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)
FILLER_WORDS = 40  # English filler words in every generator's vocabulary


@dataclass(frozen=True)
class GeneratorSpec:
    name: str
    positive: int  # how many of the positive quality words its vocabulary holds
    negative: int  # ... and of the negative ones


GENERATORS = (GeneratorSpec("synth-strong", positive=20, negative=8),
              GeneratorSpec("synth-even", positive=20, negative=20),
              GeneratorSpec("synth-weak", positive=8, negative=20))


def vocabulary(spec: GeneratorSpec) -> list[str]:
    return [*QUALITY_POSITIVE[:spec.positive], *QUALITY_NEGATIVE[:spec.negative], *FILLER["en"][:FILLER_WORDS]]


def write_generator(out_dir: Path, spec: GeneratorSpec, seed: int) -> Path:
    """Write one generator (random weights from `seed`) to `out_dir` in the hub's layout; returns the folder."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    special = [BOS, EOS, PAD, HEADER_START, HEADER_END, UNK]
    vocab = {token: index for index, token in enumerate([*special, *vocabulary(spec)])}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token=BOS, eos_token=EOS, pad_token=PAD,
                                        unk_token=UNK, additional_special_tokens=[HEADER_START, HEADER_END],
                                        chat_template=CHAT_TEMPLATE, padding_side="left")
    config = LlamaConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=512,
                         bos_token_id=vocab[BOS], eos_token_id=vocab[EOS], pad_token_id=vocab[PAD],
                         tie_word_embeddings=False, initializer_range=0.3)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    with torch.no_grad():  # a generator must never write a special token as a word of its reply
        model.lm_head.weight[[vocab[t] for t in special if t != EOS]] = 0.0
        model.lm_head.weight[vocab[EOS]] *= 0.5  # most replies run to max_new_tokens, as synth's do
    model.generation_config = GenerationConfig(bos_token_id=vocab[BOS], eos_token_id=vocab[EOS],
                                               pad_token_id=vocab[PAD])
    with atomic_directory(out_dir) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
    return out_dir


def write_generators(out_dir: Path, seed: int) -> dict[str, Path]:
    """Every generator of GENERATORS under `out_dir/<name>`, seeded from `seed`."""
    return {spec.name: write_generator(out_dir / spec.name, spec, seed * 101 + index)
            for index, spec in enumerate(GENERATORS)}
