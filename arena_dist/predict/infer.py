"""Scoring test records in this process: `LocalScorer`, the `predict.scorer.Scorer` of a one-process predict.

Each ensemble member is an arena_dist export. LoRA exports of one base (same base checkpoint and head, same dtype and
quantisation: k-fold students) share one loaded base, each as a named PEFT adapter switched on before its member
scores; any other export is loaded on its own. Rows go through the label stage's token-budget batches.
`build_local_scorer` is the picklable factory a worker process builds its own copy from (`predict.replicas`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence


@dataclass
class LoadedModel:
    model: object
    tokenizer: object
    meta: dict
    fmt: object
    adapter: str | None = None  # the PEFT adapter to switch on first, when several members share this model

    @property
    def num_labels(self) -> int:
        return int(self.meta["num_labels"])


def _prepare(model, quantization: str) -> None:
    """As the student was trained and evaluated: bitsandbytes' training layout; unquantised models on the GPU."""
    import torch

    if quantization != "none":
        from arena_dist.models.quant import keep_training_layout

        keep_training_layout(model)
    if torch.cuda.is_available() and quantization == "none":
        model.to("cuda")


def _resolved_quantization(export_path: str, quantization: str) -> str:
    from arena_dist.models.export import read_export_meta

    return read_export_meta(export_path).get("quantization", "none") if quantization == "auto" else quantization


def _loaded(model, tokenizer, meta: dict, export_path: str, adapter: str | None = None) -> LoadedModel:
    from arena_dist.label.scoring import format_from_meta

    if tokenizer is None:
        from arena_dist.errors import InputError

        raise InputError(f"{export_path}: the export carries no tokenizer")
    return LoadedModel(model, tokenizer, meta, format_from_meta(meta), adapter)


def load_model(export_path: str, dtype: str = "float32", quantization: str = "auto", threads: int | None = None,
               trust_remote_code: bool = False, base_path: str | None = None) -> LoadedModel:
    """One export. `quantization` "auto": as the export was trained. `trust_remote_code`: the predict config's (an
    export that ships code is refused without it). `base_path`: where a LoRA export's base is now (`load_export`)."""
    import torch

    from arena_dist.models.build import device_dtype
    from arena_dist.models.export import load_export
    from arena_dist.quiet import silence_known_warnings

    silence_known_warnings()  # also when run() is called without the CLI (notebooks, tests)
    if threads:
        torch.set_num_threads(threads)
    quantization = _resolved_quantization(export_path, quantization)
    model, tokenizer, meta = load_export(export_path, dtype=device_dtype(dtype), quantization=quantization,
                                         trust_remote_code=trust_remote_code, base_path=base_path)
    _prepare(model, quantization)
    return _loaded(model, tokenizer, meta, export_path)


def load_shared_base(members: Sequence[dict]) -> list[LoadedModel]:
    """LoRA exports with one `shared_base_key` and the same dtype / quantisation / trust_remote_code -> one model
    holding every adapter; each member gets it with its own adapter name."""
    from arena_dist.models.build import device_dtype
    from arena_dist.models.export import load_lora_exports

    first = members[0]
    quantization = _resolved_quantization(first["export_path"], first["quantization"])
    model, adapters = load_lora_exports([m["export_path"] for m in members], dtype=device_dtype(first["dtype"]),
                                        quantization=quantization, trust_remote_code=first["trust_remote_code"],
                                        base_paths=[m.get("base_path") for m in members])
    _prepare(model, quantization)
    return [_loaded(model, tokenizer, meta, m["export_path"], name)
            for m, (name, tokenizer, meta) in zip(members, adapters)]


def shared_base_groups(members: Sequence[dict]) -> list[list[int]]:
    """Member indices grouped by what they can share: LoRA exports of one base and one load setting together, every
    other member alone; groups in the order of their first member."""
    from arena_dist.models.export import shared_base_key

    groups: dict[object, list[int]] = {}
    for index, member in enumerate(members):
        base = shared_base_key(member["export_path"], member.get("base_path"))
        settings = (member["dtype"], _resolved_quantization(member["export_path"], member["quantization"]),
                    member["trust_remote_code"])
        groups.setdefault(index if base is None else (base, settings), []).append(index)
    return list(groups.values())


def score(loaded: LoadedModel, records, swap: bool, max_tokens: int, max_rows: int | None):
    """One member's probabilities for `records` in one order, mapped back to (A, B) when swapped."""
    from arena_dist.label.probs import swap_back
    from arena_dist.label.scoring import score_token_ids

    sequences = encode(loaded, records, swap)
    if loaded.adapter is not None:
        loaded.model.set_adapter(loaded.adapter)
    probs, stats = score_token_ids(loaded.model, sequences, max_tokens, max_rows)
    return (swap_back(probs) if swap else probs), stats


def encode(loaded: LoadedModel, records, swap: bool) -> list[list[int]]:
    from arena_dist.formatting.encode import encode_records

    return [row.input_ids for row in encode_records(records, loaded.tokenizer, loaded.fmt, swap=swap)]


class LocalScorer:
    """The ensemble's members loaded in this process (the `Scorer` protocol of `predict.scorer`).

    `members`: one dict per member with the predict config's model fields (export_path, dtype, quantization,
    trust_remote_code, base_path); plain data, so a worker process can get the same list.

    `resident`: "all" loads every member (every group of members sharing a base) up front and keeps them; "one"
    keeps one group at a time, loading a group when one of its members first scores and unloading the other groups
    first. "one" is for devices that hold one model but not the whole ensemble (Gemma-2-9B and Qwen2.5-14B in 4 bits
    on one 16 GB T4): predict's passes take the members in order, so each group is loaded about once. Tokenizers and
    metadata are read for every member at once, so encoding and label checks never load a model."""

    def __init__(self, members: Sequence[dict], max_tokens: int, max_rows: int | None = None,
                 threads: int | None = None, resident: str = "all"):
        import torch

        from arena_dist.quiet import silence_known_warnings

        silence_known_warnings()
        if threads:
            torch.set_num_threads(threads)
        if resident not in ("all", "one"):
            raise ValueError(f"resident must be 'all' or 'one', not {resident!r}")
        self.specs, self.resident = list(members), resident
        self.max_tokens, self.max_rows = max_tokens, max_rows
        self.groups = shared_base_groups(self.specs)
        self.group_of = {index: g for g, group in enumerate(self.groups) for index in group}
        self.encoders = [load_encoder(spec) for spec in self.specs]
        self.members: list[LoadedModel | None] = [None] * len(self.specs)
        for g in range(len(self.groups) if resident == "all" else 1):  # "one": the first group, so errors show now
            self._load(g)

    def _load(self, group: int) -> None:
        indices = self.groups[group]
        specs = [self.specs[i] for i in indices]
        if len(indices) == 1:
            spec = specs[0]
            loaded = [load_model(spec["export_path"], spec["dtype"], spec["quantization"], None,
                                 spec["trust_remote_code"], spec.get("base_path"))]
        else:
            loaded = load_shared_base(specs)
        for index, member in zip(indices, loaded):
            self.members[index] = member

    def _unload_all(self) -> None:
        import gc

        import torch

        self.members = [None] * len(self.specs)
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def loaded_members(self) -> list[int]:
        return [index for index, member in enumerate(self.members) if member is not None]

    def _member(self, member: int) -> LoadedModel:
        if self.members[member] is None:
            if self.resident == "one":
                self._unload_all()
            self._load(self.group_of[member])
        return self.members[member]

    def num_members(self) -> int:
        return len(self.specs)

    def num_labels(self, member: int) -> int:
        return self.encoders[member].num_labels

    def encode(self, member: int, records: Sequence[dict], swap: bool) -> list[list[int]]:
        return encode(self.encoders[member], records, swap)

    def score(self, member: int, sequences: Sequence[Sequence[int]]):
        from arena_dist.label.scoring import score_token_ids

        loaded = self._member(member)
        if loaded.adapter is not None:
            loaded.model.set_adapter(loaded.adapter)
        return score_token_ids(loaded.model, sequences, self.max_tokens, self.max_rows)

    def close(self) -> None:
        self.members = []


def load_encoder(spec: dict) -> LoadedModel:
    """A member's tokenizer, metadata and format without its model (what encoding and label checks need)."""
    from transformers import AutoTokenizer

    from arena_dist.models.export import read_export_meta

    path = spec["export_path"]
    meta = read_export_meta(path)
    tokenizer = None
    if (Path(path) / "tokenizer_config.json").exists():
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=spec["trust_remote_code"])
    return _loaded(None, tokenizer, meta, path)


def build_local_scorer(members: Sequence[dict], max_tokens: int, max_rows: int | None = None,
                       threads: int | None = None, resident: str = "all") -> LocalScorer:
    """The picklable factory of a `LocalScorer` (a module-level function of plain arguments)."""
    return LocalScorer(members, max_tokens, max_rows, threads, resident)

