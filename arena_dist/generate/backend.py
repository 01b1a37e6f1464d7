"""Generation backends: conversations in, one sampled assistant reply per conversation out.

`Generator` is the whole interface a backend offers the generate stage. `TransformersGenerator` implements it with
`model.generate`: each model's own chat template (`apply_chat_template(..., add_generation_prompt=True)`), prompts
sorted by length into token-budget batches (arena_dist.label.batching), left padding (a decoder appends new tokens
on the right, so every row's prompt must end at the same position), sampling settings from the config.

A GPU batch engine (vLLM, SGLang, TensorRT-LLM) plugs in as another class with the same `generate` method: it takes
the same conversations and `SamplingSettings`, applies the same chat template (the engines accept the rendered
prompt ids), and does its own continuous batching, so it ignores `max_tokens` / `max_rows`. The stage picks the
backend by name (`backend` in the generate config) and nothing else changes: the pairing, the exactly-once store and
the actors stay as they are.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence

from arena_dist.label.batching import PaddingStats, padding_stats, token_budget_batches

Conversation = list[dict]  # [{"role": "user" | "assistant", "content": str}, ...], ending with a user message


@dataclass(frozen=True)
class SamplingSettings:
    temperature: float = 0.7  # 0: greedy decoding
    top_p: float = 0.95
    top_k: int = 0  # 0: off. Passed explicitly: transformers otherwise applies its own default of 50
    max_new_tokens: int = 512
    min_new_tokens: int = 1  # an empty reply is no use in a pool (prepare quarantines it)
    seed: int = 0  # torch's generator is seeded from it (plus the batch's key) before each call
    max_tokens: int = 16384  # (prompt + max_new_tokens) x rows per batch
    max_rows: int | None = None


@dataclass(frozen=True)
class Generated:
    text: str
    prompt_ids: list[int]  # the prompt tokens the model saw (padding removed)
    new_tokens: int  # tokens generated up to and including the end-of-turn token


class Generator(Protocol):
    """One loaded generator model."""

    def generate(self, conversations: Sequence[Conversation], settings: SamplingSettings) -> list[str]:
        """One reply per conversation, in order."""
        ...


def generation_batches(prompt_lengths: Sequence[int], max_new_tokens: int, max_tokens: int,
                       max_rows: int | None = None) -> list[list[int]]:
    """Prompt indices in batches sorted by length; a batch's budget counts every row at its longest prompt plus
    `max_new_tokens` (what the K/V cache grows to)."""
    return token_budget_batches([length + max_new_tokens for length in prompt_lengths], max_tokens, max_rows)


def pad_left(sequences: Sequence[Sequence[int]], pad_id: int) -> tuple[list[list[int]], list[list[int]]]:
    """(input_ids, attention_mask) padded on the left to the longest sequence: every prompt ends at the last column,
    where generation continues."""
    longest = max((len(seq) for seq in sequences), default=0)
    ids = [[pad_id] * (longest - len(seq)) + list(seq) for seq in sequences]
    mask = [[0] * (longest - len(seq)) + [1] * len(seq) for seq in sequences]
    return ids, mask


def torch_inference_mode(function):
    """`torch.inference_mode()` without importing torch when this module is imported."""
    import functools

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        import torch

        with torch.inference_mode():
            return function(*args, **kwargs)

    return wrapper


class TransformersGenerator:
    """A causal LM from a hub id or folder, loaded once, generating with `model.generate`."""

    def __init__(self, name_or_path: str, dtype: str = "float32", device: str | None = None,
                 trust_remote_code: bool = False):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

        from arena_dist.models.build import device_dtype

        self.name_or_path = name_or_path
        self.tokenizer = AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
        if not self.tokenizer.chat_template:
            raise ValueError(f"{name_or_path}: the tokenizer has no chat template (a base model, not a chat model?)")
        self.device = torch.device(device or ("cuda:0" if torch.cuda.is_available() else "cpu"))
        self.model = AutoModelForCausalLM.from_pretrained(name_or_path, dtype=device_dtype(dtype),
                                                          trust_remote_code=trust_remote_code).to(self.device)
        self.model.eval()
        try:
            generation = GenerationConfig.from_pretrained(name_or_path)
        except OSError:  # no generation_config.json: the model config's ids
            generation = GenerationConfig.from_model_config(self.model.config)
        eos = generation.eos_token_id if generation.eos_token_id is not None else self.tokenizer.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, list) else [eos])
        # Llama-3 has no pad token; any id works under a zero attention mask, the first end-of-turn id is one.
        pad = self.tokenizer.pad_token_id
        self.pad_id = int(pad if pad is not None else min(self.eos_ids))
        self.padding = PaddingStats()  # prompt padding of every batch so far

    def encode(self, conversation: Conversation) -> list[int]:
        """The prompt ids of one conversation in the model's own chat template, ready for the assistant's reply."""
        rendered = self.tokenizer.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
        # The template writes the special tokens (bos included) itself: the tokenizer must not add them again.
        return self.tokenizer(rendered, add_special_tokens=False)["input_ids"]

    def generate(self, conversations: Sequence[Conversation], settings: SamplingSettings) -> list[str]:
        return [item.text for item in self.generate_detailed(conversations, settings)]

    def generate_detailed(self, conversations: Sequence[Conversation], settings: SamplingSettings,
                          key: int = 0) -> list[Generated]:
        """Replies with the prompt ids each row was fed and its number of new tokens. `key` (e.g. a shard's
        index) is mixed into the seed so reruns of the same work sample the same, whatever ran before."""
        import torch

        prompts = [self.encode(conversation) for conversation in conversations]
        lengths = [len(ids) for ids in prompts]
        batches = generation_batches(lengths, settings.max_new_tokens, settings.max_tokens, settings.max_rows)
        self.padding = self.padding + padding_stats(lengths, batches)
        out: list[Generated | None] = [None] * len(prompts)
        for number, batch in enumerate(batches):
            torch.manual_seed((settings.seed * 1_000_003 + key * 10_007 + number) % (2**63))
            for row, item in zip(batch, self._generate_batch([prompts[i] for i in batch], settings)):
                out[row] = item
        return out  # type: ignore[return-value]

    @torch_inference_mode
    def _generate_batch(self, prompts: list[list[int]], settings: SamplingSettings) -> list[Generated]:
        import torch

        ids, mask = pad_left(prompts, self.pad_id)
        input_ids = torch.tensor(ids, device=self.device)
        attention_mask = torch.tensor(mask, device=self.device)
        sampling = {"do_sample": True, "temperature": settings.temperature, "top_p": settings.top_p,
                    "top_k": settings.top_k} \
            if settings.temperature > 0 else {"do_sample": False}
        output = self.model.generate(
            input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=settings.max_new_tokens,
            min_new_tokens=min(settings.min_new_tokens, settings.max_new_tokens), pad_token_id=self.pad_id,
            eos_token_id=sorted(self.eos_ids), **sampling,
        )
        results = []
        for row in range(len(prompts)):
            seen = input_ids[row][attention_mask[row].bool()].tolist()
            new = output[row, input_ids.shape[1]:].tolist()
            end = next((i + 1 for i, token in enumerate(new) if token in self.eos_ids), len(new))
            text = self.tokenizer.decode(new[:end], skip_special_tokens=True).strip()
            results.append(Generated(text, seen, end))
        return results
