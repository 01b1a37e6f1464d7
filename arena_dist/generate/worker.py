"""`PairGenerator`: every generator model loaded once, answering whole input shards with two models per prompt.

Kept Ray-free (the Ray actor in `arena_dist.generate.driver` wraps it), so tests and a single-process run use the
same code. Multi-turn prompts are answered turn by turn: a model's reply to turn t is part of the conversation it
sees for turn t+1, as in a real chat, so `response_a` / `response_b` have one reply per prompt turn.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

from arena_dist.generate.backend import Conversation, SamplingSettings
from arena_dist.generate.pairing import pick_pair


@dataclass(frozen=True)
class GeneratorSpec:
    id: str
    name_or_path: str
    weight: float = 1.0
    trust_remote_code: bool = False


def conversation_at(prompt: list[str], replies: list[str], turn: int) -> Conversation:
    """The conversation up to the user's turn `turn`, with the model's own replies to the turns before it."""
    messages: Conversation = []
    for index in range(turn + 1):
        messages.append({"role": "user", "content": prompt[index]})
        if index < turn:
            messages.append({"role": "assistant", "content": replies[index]})
    return messages


class PairGenerator:
    def __init__(self, generators: list[GeneratorSpec], sampling: SamplingSettings, seed: int = 0,
                 dtype: str = "float32", gpus: float = 0, threads: int | None = None, secrets=None):
        """`secrets`: the driver's hub token (`arena_dist.worker_env.SecretEnv`), set before anything is loaded."""
        import torch

        from arena_dist.generate.backend import TransformersGenerator
        from arena_dist.quiet import silence_known_warnings
        from arena_dist.worker_env import apply_secrets

        silence_known_warnings()  # an actor is a process of its own: the driver's filters do not reach it
        apply_secrets(secrets)
        if threads:
            torch.set_num_threads(threads)
        started = time.perf_counter()
        device = "cuda:0" if gpus > 0 and torch.cuda.is_available() else "cpu"
        self.specs = list(generators)
        self.models = {spec.id: TransformersGenerator(spec.name_or_path, dtype, device, spec.trust_remote_code)
                       for spec in self.specs}
        self.sampling, self.seed = sampling, seed
        self.load_seconds = time.perf_counter() - started

    def info(self) -> dict:
        import torch

        return {"pid": os.getpid(), "load_seconds": round(self.load_seconds, 3), "threads": torch.get_num_threads(),
                "generators": list(self.models)}

    def pair(self, record_id: str) -> tuple[str, str]:
        return pick_pair(record_id, [s.id for s in self.specs], [s.weight for s in self.specs], self.seed)

    def answer(self, records: list[dict], key: int = 0) -> dict:
        """Two replies (one per model of the row's pair) to every record's prompt; columns of the pool."""
        pairs = [self.pair(record["id"]) for record in records]
        replies: dict[tuple[int, str], list[str]] = {(row, model): [] for row, pair in enumerate(pairs)
                                                     for model in pair}
        new_tokens = empty = 0
        padding_before = {model_id: model.padding for model_id, model in self.models.items()}
        for turn in range(max((len(record["prompt"]) for record in records), default=0)):
            for number, (model_id, model) in enumerate(self.models.items()):
                rows = [row for row, pair in enumerate(pairs)
                        if model_id in pair and len(records[row]["prompt"]) > turn]
                if not rows:
                    continue
                conversations = [conversation_at(records[row]["prompt"], replies[(row, model_id)], turn)
                                 for row in rows]
                batch_key = (key * 1000 + turn) * 100 + number  # a fixed seed per (shard, turn, model)
                for row, item in zip(rows, model.generate_detailed(conversations, self.sampling, batch_key)):
                    replies[(row, model_id)].append(item.text)
                    new_tokens += item.new_tokens
                    empty += not item.text.strip()
        padding = _padding_delta(padding_before, self.models)
        return {
            "ids": [record["id"] for record in records],
            "prompt": [list(record["prompt"]) for record in records],
            "response_a": [replies[(row, pair[0])] for row, pair in enumerate(pairs)],
            "response_b": [replies[(row, pair[1])] for row, pair in enumerate(pairs)],
            "model_a": [pair[0] for pair in pairs],
            "model_b": [pair[1] for pair in pairs],
            "language": [record.get("language") or "unknown" for record in records],
            # empty replies (only special tokens, or whitespace): prepare quarantines their rows, so they are counted
            "stats": {"rows": len(records), "new_tokens": new_tokens, "empty_replies": empty, **padding},
        }

    def generate_shard(self, path: str, index: int = 0) -> dict:
        from arena_dist.data.store import read_shard
        from arena_dist.io import sha256_file

        started, cpu_started = time.perf_counter(), time.process_time()
        result = self.answer(read_shard(path), key=index)
        return {**result, "input_sha256": sha256_file(path),  # what this actor read; the driver compares it
                "seconds": time.perf_counter() - started, "cpu_seconds": time.process_time() - cpu_started,
                "pid": os.getpid()}


def _padding_delta(before: dict, models: dict) -> dict:
    """Prompt padding of the batches since `before` (every model's), as padded / real prompt tokens."""
    real = sum(models[m].padding.real_tokens - before[m].real_tokens for m in models)
    padded = sum(models[m].padding.padded_tokens - before[m].padded_tokens for m in models)
    batches = sum(models[m].padding.batches - before[m].batches for m in models)
    return {"batches": batches, "prompt_tokens": real, "padded_prompt_tokens": padded}
