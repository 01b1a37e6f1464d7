"""In-process scoring: padded token-budget batches give the same probabilities as unpadded rows one at a time."""

import numpy as np
import pytest

from arena_dist.label.scoring import teacher_extra_texts

pytestmark = pytest.mark.slow  # builds a tiny model (a few seconds)


def test_batched_equals_unbatched_and_swap_mapping(tmp_path):
    import torch

    from arena_dist.data.store import iter_records
    from arena_dist.formatting.encode import encode_records
    from arena_dist.label.scoring import format_from_meta, score_records
    from tiny_fixtures import make_pool_dataset, make_teacher_export
    from arena_dist.models.export import load_export

    records = list(iter_records(make_pool_dataset(tmp_path / "pool", n_rows=24, num_shards=1), "pool"))
    model, tokenizer, meta = load_export(make_teacher_export(tmp_path / "teacher", max_length=256))
    fmt = format_from_meta(meta)
    scored = score_records(model, tokenizer, fmt, records, max_tokens=1024)  # several padded batches
    assert scored.stats.batches > 3 and scored.stats.padded_tokens > scored.stats.real_tokens
    with torch.no_grad():
        for swap, column in ((False, scored.p_ab), (True, scored.p_ba_mapped)):
            for i, row in enumerate(encode_records(records, tokenizer, fmt, swap=swap)):
                p = torch.softmax(model(input_ids=torch.tensor([row.input_ids])).logits, -1)[0].numpy()
                expected = [p[1], p[0], p[2]] if swap else p
                np.testing.assert_allclose(column[i], expected, atol=1e-5)
    np.testing.assert_allclose(scored.p_mean, (scored.p_ab + scored.p_ba_mapped) / 2)
    np.testing.assert_allclose(scored.p_mean.sum(axis=1), 1.0, atol=1e-9)
    caches = []  # the decoder's outputs: a classification forward keeps no K/V cache
    hook = model.model.register_forward_hook(lambda module, args, output: caches.append(output.past_key_values))
    try:
        no_swap = score_records(model, tokenizer, fmt, records, max_tokens=1024, swap_tta=False)
    finally:
        hook.remove()
    assert caches and all(cache is None for cache in caches)
    assert no_swap.p_ba_mapped is None
    np.testing.assert_allclose(no_swap.p_mean, scored.p_ab, atol=1e-6)


def test_teacher_extra_texts_follow_the_swap():
    records = [{"model_a": "alpha", "model_b": "beta"}]
    assert teacher_extra_texts(records, [], swapped=False) is None
    assert teacher_extra_texts(records, ["none"], swapped=False) is None
    plain = teacher_extra_texts(records, ["model_names"], swapped=False)[0]
    swapped = teacher_extra_texts(records, ["model_names"], swapped=True)[0]
    assert plain.index("alpha") < plain.index("beta") and swapped.index("beta") < swapped.index("alpha")


def test_scorer_runs_shipped_code_only_when_the_label_config_trusts_it(tmp_path, ship_code):
    """What a label actor does with an export that ships code: refuse it (its own metadata's claim does not count);
    run it when the label config's `teachers[].trust_remote_code` (handed to the actor by the driver) is on."""
    import os
    import subprocess
    import sys

    from arena_dist.errors import InputError
    from arena_dist.label.scoring import TeacherScorer
    from tiny_fixtures import make_teacher_export

    marker = tmp_path / "imported.txt"
    export = ship_code(make_teacher_export(tmp_path / "shipping-teacher", max_length=64), marker)
    with pytest.raises(InputError, match=r"shipping-teacher: the export ships Python code .*trust_remote_code: true"):
        TeacherScorer(str(export))
    assert not marker.exists()
    # A fresh process with its own modules cache: transformers copies the shipped code there before importing it.
    code = ("import sys; from arena_dist.label.scoring import TeacherScorer; "
            "print(type(TeacherScorer(sys.argv[1], trust_remote_code=True).model).__name__)")
    done = subprocess.run([sys.executable, "-c", code, str(export)], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "HF_MODULES_CACHE": str(tmp_path / "modules")})
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split()[-1] == "ShippedLlamaForSequenceClassification"
    assert marker.read_text() == "imported"


@pytest.mark.parametrize("arch", ["gemma2", "llama"])
def test_fp16_overflow_rows_alone_are_recomputed_in_float32(arch):
    """A real fp16 classifier on CPU whose embedding writes inf into the rows holding MARK while it runs in fp16
    (what Gemma-2's activations do to some rows in fp16): those rows come back finite and equal to a float32 copy's,
    the others keep their fp16 batch's probabilities bit for bit, and the stats count exactly the injected rows."""
    import copy

    import torch

    from arena_dist.label.scoring import score_token_ids
    from arena_dist.models.build import build_model
    from tiny_fixtures import tiny_model_config

    mark, pad = 5, 0
    model = build_model(tiny_model_config(arch, vocab_size=128, dtype="float16", attn_implementation="eager"), 3,
                        pad, for_training=False).eval()
    gen = torch.Generator().manual_seed(0)
    rows = [torch.randint(6, 128, (length,), generator=gen).tolist() for length in (7, 12, 9, 15, 5, 11, 8, 13)]
    injected = [1, 4, 6]
    for r in injected:
        rows[r][len(rows[r]) // 2] = mark
    reference, _ = score_token_ids(copy.deepcopy(model).float(), rows, max_tokens=4096)
    clean, _ = score_token_ids(model, rows, max_tokens=4096)  # one batch: injected and clean rows together

    def overflow_in_fp16(module, inputs, output):
        if output.dtype == torch.float16:
            return output.masked_fill((inputs[0] == mark).any(-1)[:, None, None], float("inf"))

    model.get_input_embeddings().register_forward_hook(overflow_in_fp16)
    probs, stats = score_token_ids(model, rows, max_tokens=4096)
    assert stats.fp32_rows == len(injected) and stats.as_dict()["fp32_rows"] == len(injected)
    assert np.isfinite(probs).all()
    np.testing.assert_allclose(probs[injected], reference[injected], atol=1e-5, rtol=0)
    others = [r for r in range(len(rows)) if r not in injected]
    np.testing.assert_array_equal(probs[others], clean[others])
    assert np.abs(clean[others] - reference[others]).max() > 1e-6  # fp16 differs: a recompute would show
    assert {p.dtype for p in model.parameters()} == {torch.float16}  # back in fp16 after the recompute

    def nan_in_any_dtype(module, inputs, output):
        return output.masked_fill((inputs[0] == mark).any(-1)[:, None, None], float("nan"))

    model.get_input_embeddings().register_forward_hook(nan_in_any_dtype)
    with pytest.raises(FloatingPointError, match=r"rows \[1, 4, 6\] \(of 3\) have non-finite logits"):
        score_token_ids(model, rows, max_tokens=4096)  # still NaN in float32: an error, never a NaN label


def test_fp16_overflow_recompute_on_a_4bit_model_restores_its_compute_dtype():
    """A QLoRA student's bitsandbytes 4-bit layers compute in float32 for the recomputed rows only, then in fp16
    again; the clean rows keep their batch's probabilities."""
    import torch

    from arena_dist.label.scoring import score_token_ids
    from arena_dist.models.build import build_model
    from tiny_fixtures import tiny_model_config

    model = build_model(tiny_model_config("llama", vocab_size=128, dtype="float16", quantization="4bit"), 3, 0,
                        for_training=False).eval()
    rows = [[7, 8, 9, 5, 10], [11, 12, 13], [20, 5, 21, 22]]
    clean, _ = score_token_ids(model, rows, max_tokens=4096)
    model.get_input_embeddings().register_forward_hook(
        lambda module, inputs, out: out.masked_fill((inputs[0] == 5).any(-1)[:, None, None], float("inf"))
        if out.dtype == torch.float16 else None)
    probs, stats = score_token_ids(model, rows, max_tokens=4096)
    assert stats.fp32_rows == 2 and np.isfinite(probs).all()
    np.testing.assert_array_equal(probs[1], clean[1])
    np.testing.assert_allclose(probs[[0, 2]], clean[[0, 2]], atol=1e-3)  # fp32 vs fp16 compute of the same weights
    computing = {m.compute_dtype for m in model.modules() if getattr(m, "compute_dtype", None) is not None}
    assert computing == {torch.float16} and {p.dtype for p in model.parameters()} == {torch.float16, torch.uint8}
