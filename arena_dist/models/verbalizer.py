"""`model.head: verbalizer`: the class logits are the causal LM's next-token logits for the answer words.

The prompt already ends with the options and the answer cue in the family's chat template ("Which is better? A, B or
tie" + end of user turn + assistant header, `arena_dist.formatting.templates`), so a causal LM's natural next token
is one of the words the options line names: "A", "B", "tie" (`ANSWER_WORDS`). The seed solutions' "###options A.
Model A B. Model B C. Tie" text is not needed: there the answers are letters the options define, here they are the
words themselves, and keeping one prompt layout for every head means encoding, packing, label and predict are shared.
Each word must be one token of the family's tokenizer (checked at build, `answer_token_ids`).

Design: a head initialised from the LM head's answer rows, not a gather of those rows out of a causal LM. The
checkpoint loads as `*ForSequenceClassification` (transformers pools the last non-pad token), whose `score` becomes a
`VerbalizerHead`: bias-free, the rows of the output embedding at the answer ids (`lm_head.weight`, or the input
embeddings when tied, as in Gemma-2 and small Qwen2) read from the safetensors shards alone, and Gemma-2's final
logit soft-capping. At step 0 the class logits therefore equal the causal LM's next-token logits at those ids,
without ever computing vocabulary-sized logits or building the causal LM. Every stage (ZeRO-3, LoRA's
modules_to_save, 4-bit students, the export writer and loader) already handles that classifier and its `score.weight`;
a gather would need a second model class in each of them. Under ZeRO-3 the rows are copied into the partitioned head
(`GatheredParameters`, rank 0's copy kept). The head has no dropout: the causal LM's logits have none.

`export_causal_lm` writes a trained export back as a plain causal-LM checkpoint (a generation server can serve it):
the base causal LM, the trained body, and the LM head with the answer rows replaced by the trained head's.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

import torch
from torch import nn

from arena_dist.errors import ConfigError, InputError
from arena_dist.formatting.templates import ANSWER_WORDS


class VerbalizerHead(nn.Linear):
    """Bias-free linear layer over the answer rows, soft-capped as the causal LM caps its logits (Gemma-2)."""

    def __init__(self, hidden_size: int, num_labels: int, softcap: float | None = None):
        super().__init__(hidden_size, num_labels, bias=False)
        self.softcap = softcap

    def forward(self, hidden):
        logits = super().forward(hidden)
        if self.softcap:  # the same three operations as the causal LM, so step-0 logits match bit for bit
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits


def answer_token_ids(tokenizer, label_mode: str) -> list[int]:
    """The token id of each answer word of `label_mode`; ConfigError when a word is not exactly one token."""
    ids = []
    for word in ANSWER_WORDS[label_mode]:
        found = tokenizer.encode(word, add_special_tokens=False)
        if len(found) != 1:
            raise ConfigError(f"model.head=verbalizer: the answer word {word!r} is {len(found)} tokens in tokenizer "
                              f"{getattr(tokenizer, 'name_or_path', '?')!r}, not one (use head linear or mlp)")
        ids.append(int(found[0]))
    return ids


def _safetensors_file(name_or_path: str, key: str) -> str:
    """The checkpoint file (local folder or hub id) holding tensor `key`, via the safetensors index if sharded."""
    from transformers.utils import cached_file

    index = cached_file(name_or_path, "model.safetensors.index.json", _raise_exceptions_for_missing_entries=False)
    if index is not None:
        shard = json.loads(Path(index).read_text())["weight_map"].get(key)
        if shard is None:
            raise ConfigError(f"{index}: no {key} in the weight map (model.head=verbalizer needs a causal-LM "
                              "checkpoint's output embedding)")
        return cached_file(name_or_path, shard)
    single = cached_file(name_or_path, "model.safetensors", _raise_exceptions_for_missing_entries=False)
    if single is None:
        raise ConfigError(f"{name_or_path}: no model.safetensors(.index.json) to read the LM head's answer rows from "
                          "(model.head=verbalizer)")
    return single


def output_embedding_rows(name_or_path: str, config, token_ids: list[int]) -> torch.Tensor:
    """Rows `token_ids` of the checkpoint's output embedding, read row by row (never the whole matrix)."""
    from safetensors import safe_open

    tied = getattr(config, "tie_word_embeddings", False)
    key = "model.embed_tokens.weight" if tied else "lm_head.weight"
    path = _safetensors_file(name_or_path, key)
    with safe_open(path, framework="pt") as handle:
        if key not in handle.keys():
            raise ConfigError(f"{path}: no {key} (model.head=verbalizer needs a causal-LM checkpoint's output "
                              "embedding)")
        matrix = handle.get_slice(key)
        return torch.cat([matrix[i:i + 1] for i in token_ids])


def install_verbalizer_head(model, token_ids: list[int], init_from: str | None) -> None:
    """Replace `model.score` by a VerbalizerHead on the same weight (partitioned under ZeRO-3, or loaded from an
    export); `init_from`: the checkpoint whose answer rows initialise it (None: the weight is kept)."""
    old = model.score
    head = VerbalizerHead(old.in_features, len(token_ids), getattr(model.config, "final_logit_softcapping", None))
    head.weight = old.weight
    model.score = head
    model.config.arena_head = "verbalizer"
    model.config.arena_answer_token_ids = list(token_ids)
    if init_from is None:
        return
    rows = output_embedding_rows(init_from, model.config, token_ids)
    gathered = contextlib.nullcontext()
    if hasattr(head.weight, "ds_id"):  # ZeRO-3 partition: gather, write on rank 0, re-partition from rank 0's copy
        import deepspeed

        gathered = deepspeed.zero.GatheredParameters([head.weight], modifier_rank=0)
    with gathered, torch.no_grad():
        head.weight.copy_(rows.to(head.weight.dtype))


def verbalizer_meta(model) -> dict:
    """What an export records about a verbaliser head (nothing for other heads)."""
    if getattr(model.config, "arena_head", None) != "verbalizer":
        return {}
    return {"answer_token_ids": list(model.config.arena_answer_token_ids),
            "logit_softcap": getattr(model.config, "final_logit_softcapping", None)}


def export_causal_lm(export_dir: str | os.PathLike, out_dir: str | os.PathLike, base_path: str | None = None,
                     dtype: str = "float32", trust_remote_code: bool = False) -> Path:
    """Write a verbaliser export as a plain causal-LM checkpoint (safetensors, atomically): the base causal LM
    (`base_path`, default the one recorded at training), the export's body (LoRA merged first), and its LM head
    untied from the input embeddings with the answer rows replaced by the trained head's. Its next-token logits at
    the answer ids are the classifier's logits."""
    from transformers import AutoModelForCausalLM

    from arena_dist.io import atomic_directory
    from arena_dist.models.build import torch_dtype
    from arena_dist.models.export import check_remote_code, declared_remote_code, load_export, read_export_meta

    meta = read_export_meta(export_dir)
    if meta.get("head") != "verbalizer":
        raise InputError(f"{export_dir}: head {meta.get('head')!r}; only a verbalizer export maps onto LM-head rows")
    if meta.get("segment_markers"):
        raise InputError(f"{export_dir}: segment embeddings have no place in a plain causal LM")
    # The base the export itself loads (a LoRA export's, `base_path` overriding it), else the one recorded at
    # training; checked for shipped code like the export, before transformers can import any.
    base = (check_remote_code(export_dir, trust_remote_code, base_path=base_path) or base_path
            or (meta.get("base") or {}).get("name_or_path"))
    if base is None:
        raise InputError(f"{export_dir}: the metadata records no base causal LM (pass base_path)")
    found = not trust_remote_code and declared_remote_code(Path(base))
    if found:
        raise InputError(f"{base}: the base ships Python code (auto_map in {found}); it runs only with "
                         "model.trust_remote_code: true in the stage config, after checking the code")
    classifier, tokenizer, _ = load_export(export_dir, dtype=dtype, trust_remote_code=trust_remote_code,
                                           base_path=base_path)
    if meta["lora"]:
        classifier = classifier.merge_and_unload()
    causal = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch_dtype(dtype), use_safetensors=True,
                                                  trust_remote_code=trust_remote_code)
    prefix = classifier.base_model_prefix
    getattr(causal, prefix).load_state_dict(getattr(classifier, prefix).state_dict(), strict=True)
    weight = causal.get_output_embeddings().weight.detach().clone()
    with torch.no_grad():
        weight[meta["answer_token_ids"]] = classifier.score.weight.to(weight.dtype)
    causal.config.tie_word_embeddings = False  # the answer rows now differ from the input embeddings
    causal.get_output_embeddings().weight = nn.Parameter(weight)
    with atomic_directory(Path(out_dir)) as tmp:
        causal.save_pretrained(tmp, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
    return Path(out_dir)
