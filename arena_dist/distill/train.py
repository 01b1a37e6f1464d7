"""The student recipe of the shared training loop (`arena_dist.train.loop.Trainer`): distillation from hard and
soft labels into a (Q)LoRA student, replicated on every worker (`arena_dist.train.parallel.ReplicatedParallel`: one
gradient all-reduce per optimizer step), with the teacher's data order, checkpoints, metrics and resume."""

from __future__ import annotations

from arena_dist.distill.config import StudentConfig
from arena_dist.train.data import Encoder, Sample
from arena_dist.train.loop import TeacherRecipe


def read_soft_labels(stores: str | list[str] | None, column: str) -> dict | None:
    """id -> teacher probabilities from one or several label stores; an id in two stores is an error."""
    from arena_dist.errors import InputError
    from arena_dist.label.store import soft_labels

    if not stores:
        return None
    merged: dict = {}
    for store in [stores] if isinstance(stores, str) else stores:
        labels = soft_labels(store, column=column)
        overlap = merged.keys() & labels.keys()
        if overlap:
            raise InputError(f"{store}: id {sorted(overlap)[0]!r} is also in an earlier data.soft_labels store")
        merged.update(labels)
    return merged


def load_examples(cfg: StudentConfig, num_labels: int):
    """(train samples, eval samples, counts): every row of the dataset (the loop's GlobalOrder hands each rank its
    share of every global batch)."""
    from arena_dist.data.store import load_manifest, read_records
    from arena_dist.distill.data import mix_examples

    data = cfg.data
    splits = set(load_manifest(data.dataset_dir).get("splits", {}))
    soft = read_soft_labels(data.soft_labels, data.soft_label_column)
    held_out = None if data.fold is None else [data.fold]

    def read(split: str, folds=None, exclude=None):
        if split not in splits:
            return []
        return read_records(data.dataset_dir, split, 0, 1, folds=folds, exclude_folds=exclude)

    train = read("train", exclude=held_out) if data.use_train_split else []
    pool = read("pool", exclude=held_out) if (data.use_pool and soft is not None) else []
    examples, counts = mix_examples(train, pool, soft, num_labels, data.soft_on_hard_rows)
    if data.max_train_records:
        examples = examples[: data.max_train_records]
    eval_examples: list[Sample] = []
    if held_out is not None:
        # Held-out rows keep every target they have: hard for log loss / accuracy, soft for KL to the teacher.
        eval_train = read("train", folds=held_out)
        eval_pool = read("pool", folds=held_out) if soft is not None else []
        eval_examples, _ = mix_examples(eval_train, eval_pool, soft, num_labels, soft_on_hard_rows=True)
        if data.max_eval_records:
            eval_examples = eval_examples[: data.max_eval_records]
    return examples, eval_examples, counts


def build_student_model(cfg: StudentConfig, tokenizer, rank: int):
    """build_model, with one detour: a random-init base is quantised by a round trip through a folder, but
    transformers' save_pretrained writes only on torch.distributed rank 0, so other ranks would find an empty folder.
    Rank 0 writes the full-precision random-init base once into the run dir; every rank loads and quantises it (also
    a single rank, so that every world size starts from the same weights, head included)."""
    from arena_dist.formatting.templates import num_labels
    from arena_dist.io import atomic_directory
    from arena_dist.models.build import build_classifier, build_model
    from arena_dist.models.config import ModelConfig
    from arena_dist.train.parallel import barrier

    model_cfg = cfg.model
    if model_cfg.arch is not None and model_cfg.quantization != "none":
        base_dir = cfg.run_dir / "random_init_base"
        if rank == 0 and not (base_dir / "config.json").exists():
            plain = model_cfg.model_copy(update={"quantization": "none", "lora": None, "head": "linear",
                                                 "segment_embeddings": False,
                                                 "gradient_checkpointing": False})
            with atomic_directory(base_dir) as tmp:
                build_model(plain, num_labels(cfg.format.label_mode), int(tokenizer.pad_token_id)).save_pretrained(tmp)
        barrier()
        fields = {**model_cfg.model_dump(), "name_or_path": str(base_dir), "arch": None}
        model_cfg = ModelConfig(**fields)
    return build_classifier(model_cfg, tokenizer, cfg.format)


class StudentRecipe(TeacherRecipe):
    """Soft and hard labels, the distillation loss, replicated weights, adapter export and checked merge."""

    name = "student"
    config_class = StudentConfig
    eval_at_start = True
    uses_deepspeed = False

    def samples(self):
        from arena_dist.formatting.templates import num_labels

        train, evaluation, self.counts = load_examples(self.config, num_labels(self.config.format.label_mode))
        return train, evaluation

    def encoder(self, tokenizer) -> Encoder:
        return Encoder(tokenizer, self.config.format, require_label=False)

    def loss(self):
        from arena_dist.train.losses import Distillation, LossWeights

        loss = self.config.loss
        return Distillation(LossWeights(loss.w_ce, loss.w_kl, loss.w_cos, loss.temperature))

    def prepare(self, trainer) -> None:
        pass

    def resume_tag(self, trainer, tag: str, marker: dict) -> str:
        return tag  # the replicated trainable state loads on any world size

    def build(self, trainer):
        from arena_dist.models.build import count_parameters
        from arena_dist.train.parallel import ReplicatedParallel

        model = build_student_model(self.config, trainer.tokenizer, trainer.rank)
        if self.config.model.quantization == "none":
            model.to(trainer.device)  # bitsandbytes models are placed on the GPU while loading
        model.train()
        self.trainable_params, self.total_params = count_parameters(model)
        trainer.log(f"trainable {self.trainable_params:,}/{self.total_params:,} params, {self.counts.as_dict()}")
        return ReplicatedParallel(model, self.config.training, trainer.total_steps, trainer.world_size,
                                  trainer.device)

    def export_meta(self) -> dict:
        return {"created_by": "arena_dist student"}

    def export(self, trainer, meta: dict) -> dict:
        """Rank 0: the export (adapter + head) and the optional checked merge."""
        if trainer.rank != 0:
            return {}
        from arena_dist.models.export import save_export
        from arena_dist.models.merge import merge_export

        cfg = self.config
        export_dir = save_export(trainer.parallel.module, trainer.tokenizer, cfg.export_dir, meta,
                                 model_config=cfg.model)
        out = {"export_dir": str(export_dir)}
        if cfg.merge.enabled:
            check = trainer.encoder.encode(trainer.eval_samples[: cfg.merge.check_rows],
                                           [False] * min(len(trainer.eval_samples), cfg.merge.check_rows))
            if not check:
                raise ValueError("merge.enabled needs held-out rows (data.fold) to check the merge on")
            merged_dir = export_dir.with_name(export_dir.name + "_merged")
            out["merge"] = merge_export(export_dir, merged_dir, [e.input_ids for e in check],
                                        cfg.merge.max_logit_diff, cfg.merge.dtype,
                                        trust_remote_code=cfg.model.trust_remote_code)
            out["merged_export_dir"] = str(merged_dir)
        if cfg.causal_lm_export:
            from arena_dist.models.verbalizer import export_causal_lm

            causal_dir = export_dir.with_name(export_dir.name + "_causal_lm")
            out["causal_lm_dir"] = str(export_causal_lm(export_dir, causal_dir,
                                                        trust_remote_code=cfg.model.trust_remote_code))
        return out

    def summary(self, trainer) -> dict:
        return {"counts": self.counts.as_dict(), "trainable_params": self.trainable_params,
                "total_params": self.total_params}
