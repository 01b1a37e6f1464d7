"""Chat "generator" models of the synthetic arena world, for building a pool with `arena-dist generate`.

A pool built by `generate` is only worth distilling on if it looks like the data the student is scored on: the
synthetic preference model labels a response by the quality words it holds (arena_dist.data.synth), and synth's own
responses open each turn with one or two quality words picked by the answering model's skill, followed by filler in
one language. A random-init causal LM writes none of that: over a real tokenizer it writes sub-word gibberish with
no quality word, and even over the world's words it scatters quality words everywhere, so that each reply's mean
quality regresses to its model's average and the labels come out nearly uniform (a first demo pool built that way
had a mean label entropy of 0.996 nats against 0.79 for synth's own pool).

Each model written here is therefore a *bigram* model in Llama's clothes that follows the prompt's language: an
ordinary one-layer `LlamaForCausalLM` with one-hot token embeddings and no MLP output, whose attention has zero
queries and keys, so that it averages over the whole conversation so far a small value that marks each filler word's
language. The last hidden state is then the last token's one-hot embedding plus the conversation's language shares,
and `lm_head` holds log P(next | last) (scaled by the final RMSNorm's sqrt(hidden)) plus a large bonus for the
languages present. The bigram table speaks like synth's generating models: after the assistant header a quality word
drawn from the model's skill distribution (`World.pick_cdf`), another one with probability QUALITY_CONTINUE, then
filler of the prompt's language until the end of the turn. `generate` samples from it with the model's own chat
template (Llama-3's template and special tokens over a word-level tokenizer of the world's words) and loads it by path
exactly as it loads a hub chat model (safetensors, config, generation config, tokenizer).

What it cannot do: replies hold no topic words and no punctuation; a prompt with no filler word of any language
(nothing to follow) gets replies whose language is drawn uniformly. The labels still depend on the text only
(`synth.true_probabilities` reads it).

transformers / tokenizers / torch are imported inside the writer: `synth` itself stays numpy + pyarrow.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from arena_dist.data.synth import FILLER, LANGUAGE_CODES, QUALITY_WORDS, SynthSpec, build_world
from arena_dist.io import atomic_directory

# The Llama-3 family's own special tokens and chat layout.
BOS, EOS, PAD = "<|begin_of_text|>", "<|eot_id|>", "<|finetune_right_pad_id|>"
HEADER_START, HEADER_END, UNK = "<|start_header_id|>", "<|end_header_id|>", "<|reserved_special_token_0|>"
SPECIAL_TOKENS = (BOS, EOS, PAD, HEADER_START, HEADER_END, UNK)
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}<|start_header_id|>{{ message['role'] }}<|end_header_id|>\n\n"
    "{{ message['content'] | trim }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)
# synth's turns hold 1 + Binomial(words - 1, 0.05) quality words (about 1.45 for its demo's 6-16 words); a geometric
# count with this continuation probability has mean 1 / (1 - 0.3) = 1.43.
QUALITY_CONTINUE = 0.3
# End of turn after each filler word once min_new_tokens is reached: 6 + (1 - p) / p = 10 words on average, as
# synth's demo turns (log-uniform over 6..16 words).
END_RATE = 0.2
NEVER = -1e4  # a logit that softmax turns into exactly 0 in float32
# The language value each filler word adds to the attention average: small, so the final RMSNorm's scale stays within
# 0.1% of the pure bigram's (its hidden state's norm is sqrt(1 + marks^2)).
LANGUAGE_MARK = 0.05
# Logit bonus per unit share of a language in the conversation. A synth prompt's filler is about a fifth or more of
# the conversation's tokens, a bonus of 8 and up: other languages' filler then keeps under 0.1% of the mass.
LANGUAGE_BONUS = 40.0


@dataclass(frozen=True)
class GeneratorSpec:
    name: str
    skill: str  # "max", "median" or "min": which of synth's models (by skill) this one answers like


GENERATORS = (GeneratorSpec("synth-strong", skill="max"),
              GeneratorSpec("synth-even", skill="median"),
              GeneratorSpec("synth-weak", skill="min"))


def vocabulary() -> list[str]:
    """The words every generator can write: the quality words, then each language's filler (each word once)."""
    return list(dict.fromkeys([*QUALITY_WORDS, *(word for code in LANGUAGE_CODES for word in FILLER[code])]))


def synth_model(spec: GeneratorSpec, synth_spec: SynthSpec) -> int:
    """Index into MODEL_NAMES of the synth model `spec` answers like."""
    skills = build_world(synth_spec.preference).skills
    order = np.argsort(skills)
    return int({"min": order[0], "median": order[len(order) // 2], "max": order[-1]}[spec.skill])


def transition_table(spec: GeneratorSpec, synth_spec: SynthSpec, language: str) -> tuple[list[str], np.ndarray]:
    """(tokens, P): P[i, j] = P(next token j | last token i) in a conversation written in `language`."""
    tokens, table = _bigram_weights(spec, synth_spec)
    index = {token: i for i, token in enumerate(tokens)}
    table = table.copy()
    for code in LANGUAGE_CODES:  # the language bonus leaves only the conversation's own filler
        if code != language:
            table[:, [index[w] for w in dict.fromkeys(FILLER[code])]] = 0.0
    return tokens, table / table.sum(axis=1, keepdims=True)


def _bigram_weights(spec: GeneratorSpec, synth_spec: SynthSpec) -> tuple[list[str], np.ndarray]:
    """Unnormalised bigram weights before the language bonus; every language's filler gets a turn's whole share."""
    world = build_world(synth_spec.preference)
    pick = np.diff(world.pick_cdf[synth_model(spec, synth_spec)], prepend=0.0)  # skill distribution over quality words
    tokens = [*SPECIAL_TOKENS, *vocabulary()]
    index = {token: i for i, token in enumerate(tokens)}
    quality = np.array([index[w] for w in QUALITY_WORDS])
    table = np.zeros((len(tokens), len(tokens)))
    table[:, quality] = pick  # a turn opens with a quality word (the header ends every prompt)
    table[quality] = 0.0
    table[np.ix_(quality, quality)] = QUALITY_CONTINUE * pick
    for code in LANGUAGE_CODES:
        filler = np.array([index[w] for w in dict.fromkeys(FILLER[code])])
        table[np.ix_(quality, filler)] = (1 - QUALITY_CONTINUE) / len(filler)
        table[filler] = 0.0
        table[np.ix_(filler, filler)] = (1 - END_RATE) / len(filler)
        table[filler, index[EOS]] = END_RATE
    return tokens, table


def write_generator(out_dir: Path, spec: GeneratorSpec, synth_spec: SynthSpec) -> Path:
    """Write one generator to `out_dir` in the hub's layout; returns the folder."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tokens, table = _bigram_weights(spec, synth_spec)
    vocab = {token: i for i, token in enumerate(tokens)}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token=BOS, eos_token=EOS, pad_token=PAD,
                                        unk_token=UNK, additional_special_tokens=[HEADER_START, HEADER_END],
                                        chat_template=CHAT_TEMPLATE, padding_side="left")
    n, languages = len(tokens), len(LANGUAGE_CODES)
    hidden = 8 * math.ceil((n + languages) / 8)  # a dimension per token, then one per language; even head size (RoPE)
    config = LlamaConfig(vocab_size=n, hidden_size=hidden, intermediate_size=4, num_hidden_layers=1,
                         num_attention_heads=4, num_key_value_heads=1, max_position_embeddings=4096,
                         rms_norm_eps=1e-12, bos_token_id=vocab[BOS], eos_token_id=vocab[EOS],
                         pad_token_id=vocab[PAD], tie_word_embeddings=False)
    model = LlamaForCausalLM(config)
    root = math.sqrt(hidden)  # RMSNorm maps a one-hot vector e_i to sqrt(hidden) * e_i
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.zero_()
        for norm in (model.model.layers[0].input_layernorm, model.model.layers[0].post_attention_layernorm,
                     model.model.norm):
            norm.weight.fill_(1.0)
        model.model.embed_tokens.weight[:, :n] = torch.eye(n)
        attention = model.model.layers[0].self_attn
        for number, code in enumerate(LANGUAGE_CODES):  # zero queries and keys: the head averages these values
            attention.v_proj.weight[number, [vocab[w] for w in FILLER[code]]] = LANGUAGE_MARK / root
            attention.o_proj.weight[n + number, number] = 1.0
        logits = np.where(table > 0, np.log(np.where(table > 0, table, 1.0)), NEVER)
        model.lm_head.weight[:, :n] = torch.from_numpy((logits.T / root).astype(np.float32))
        # The language bonus: a conversation's own filler (and the quality words and end of turn that compete with
        # it) gain LANGUAGE_BONUS * that language's share of the conversation's tokens.
        bonus = LANGUAGE_BONUS / (LANGUAGE_MARK * root)
        for number, code in enumerate(LANGUAGE_CODES):
            model.lm_head.weight[[vocab[w] for w in FILLER[code]], n + number] = bonus
            model.lm_head.weight[[vocab[w] for w in QUALITY_WORDS] + [vocab[EOS]], n + number] = bonus
    model.generation_config = GenerationConfig(bos_token_id=vocab[BOS], eos_token_id=vocab[EOS],
                                               pad_token_id=vocab[PAD])
    with atomic_directory(out_dir) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
    return out_dir


def write_generators(out_dir: Path, synth_spec: SynthSpec) -> dict[str, Path]:
    """Every generator of GENERATORS under `out_dir/<name>`, speaking the world of `synth_spec`."""
    return {spec.name: write_generator(out_dir / spec.name, spec, synth_spec) for spec in GENERATORS}
