"""synth with `generated_pool`: the pool's prompts and the synthetic world's chat models, loaded by path as hub
models are, answer in the world's words, so the synthetic preference model can still judge a generated pool."""

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml

from arena_dist.data import synth
from arena_dist.data.synth_generators import GENERATORS, vocabulary
from arena_dist.stages import synth as synth_stage


def test_synth_writes_prompts_generators_and_both_prepare_configs(tmp_path):
    out, pool = tmp_path / "synth", tmp_path / "generated" / "pool.parquet"
    synth_stage.run(synth_stage.Config(output_dir=str(out), n_train=50, n_test=20, n_pool=30, n_wsdm_train=0,
                                       n_wsdm_test=0, n_pairwise=0, generated_pool=str(pool), progress=False))
    assert not (out / "pool").exists()  # the pool is generate's to write

    # The prompts are the ones synth's own pool would have had: same ids, same first user turn.
    synth.generate_pool(30, 0, tmp_path / "own" / "pool.parquet", progress=False)
    own = pq.read_table(tmp_path / "own" / "pool.parquet").to_pylist()
    prompts = [json.loads(line) for line in (out / "prompts" / "prompts.jsonl").read_text().splitlines()]
    assert [p["id"] for p in prompts] == [row["id"] for row in own]
    assert [p["messages"] for p in prompts] == [[{"role": "user", "content": row["prompt"][0]}] for row in own]
    assert [p["language"] for p in prompts] == [row["language"] for row in own]

    prepare = yaml.safe_load((out / "prepare.yaml").read_text())
    assert [s["path"] for s in prepare["sources"] if s["use_as"] == "pool"] == [str(pool)]
    prompts_prepare = yaml.safe_load((out / "prompts_prepare.yaml").read_text())
    assert prompts_prepare["sources"] == [{"name": "pool", "kind": "conversations",
                                           "path": str(out / "prompts" / "prompts.jsonl")}]
    record = json.loads((out / "stage.json").read_text())
    assert {f"generators/{spec.name}" for spec in GENERATORS} <= set(record["outputs"])
    for spec in GENERATORS:  # the hub's layout: safetensors weights, config, generation config, tokenizer
        files = {p.name for p in (out / "generators" / spec.name).iterdir()}
        assert {"model.safetensors", "config.json", "generation_config.json", "tokenizer.json"} <= files


def test_generators_answer_in_the_worlds_words_and_the_prompts_language_and_the_strong_one_wins(tmp_path):
    from arena_dist.data.synth_generators import write_generators
    from arena_dist.generate.backend import SamplingSettings, TransformersGenerator

    paths = write_generators(tmp_path, synth.SynthSpec())
    settings = SamplingSettings(temperature=1.0, top_p=1.0, max_new_tokens=16, min_new_tokens=6)
    rng = np.random.default_rng(0)
    languages = [code for code in synth.LANGUAGE_CODES for _ in range(24)]
    conversations = [[{"role": "user", "content": " ".join(rng.choice(synth.FILLER[code], 6)) + " pasta garlic?"}]
                     for code in languages]
    replies = {}
    for spec in GENERATORS:
        generator = TransformersGenerator(str(paths[spec.name]))  # by path, as a hub id
        assert generator.tokenizer.bos_token == "<|begin_of_text|>" and generator.tokenizer.eos_token == "<|eot_id|>"
        rendered = generator.tokenizer.apply_chat_template(conversations[0], add_generation_prompt=True,
                                                           tokenize=False)
        assert rendered.endswith("<|start_header_id|>assistant<|end_header_id|>\n\n")
        replies[spec.name] = generator.generate(conversations, settings)
        words = {word for reply in replies[spec.name] for word in reply.split()}
        assert words <= set(vocabulary()), words - set(vocabulary())  # no special token, no unknown word
        assert all(6 <= len(reply.split()) <= 16 for reply in replies[spec.name])
        # As synth's own turns: quality words open the reply, then filler in the prompt's language.
        for reply, code in zip(replies[spec.name], languages):
            assert reply.split()[0] in synth.QUALITY_WORDS, reply
            assert set(reply.split()) <= set(synth.QUALITY_WORDS) | set(synth.FILLER[code]), (code, reply)
    # The synthetic preference model judges the generated text: the strong model's words score higher, and it
    # wins more of its comparisons with the weak one than it loses.
    quality = {name: np.mean([q / n if n else 0.0 for q, n, _ in map(lambda r: synth.response_stats([r]), texts)])
               for name, texts in replies.items()}
    assert quality["synth-strong"] > quality["synth-weak"] + 0.1, quality
    probabilities = [synth.true_probabilities([a], [b]) for a, b in zip(replies["synth-strong"], replies["synth-weak"])]
    assert np.mean([p["p_a"] - p["p_b"] for p in probabilities]) > 0.1


@pytest.mark.parametrize("language", synth.LANGUAGE_CODES)
def test_each_generator_follows_its_bigram_table_in_the_conversations_language(tmp_path, language):
    """The checkpoint loaded by path predicts P(next | last token) as the table for the conversation's language says,
    at every position of a reply."""
    import torch

    from arena_dist.data.synth_generators import HEADER_END, transition_table, write_generator
    from arena_dist.generate.backend import TransformersGenerator

    spec = synth.SynthSpec()
    strong, weak = GENERATORS[0], GENERATORS[-1]
    tokens, table = transition_table(strong, spec, language)
    assert np.allclose(table.sum(axis=1), 1.0)
    generator = TransformersGenerator(str(write_generator(tmp_path / "strong", strong, spec)))
    rng = np.random.default_rng(1)
    prompt = " ".join(rng.choice(synth.FILLER[language], 5)) + " python list?"
    ids = generator.encode([{"role": "user", "content": prompt}])
    assert ids[-1] == tokens.index(HEADER_END)
    filler = list(dict.fromkeys(synth.FILLER[language]))
    reply = [tokens.index(w) for w in (synth.QUALITY_WORDS[3], synth.QUALITY_WORDS[30], *rng.choice(filler, 8))]
    sequence = torch.tensor([ids + reply])
    with torch.no_grad():
        probabilities = torch.softmax(generator.model(sequence).logits[0].double(), dim=-1).numpy()
    for position in range(len(ids) - 1, sequence.shape[1]):
        assert np.abs(probabilities[position] - table[sequence[0, position]]).max() < 1e-3, position
    # The strong model opens with better quality words than the weak one (skills from synth's world).
    scores = synth.build_world(spec.preference).scores
    quality = [tokens.index(w) for w in synth.QUALITY_WORDS]
    header = tokens.index(HEADER_END)
    opening = {g.name: transition_table(g, spec, language)[1][header, quality] for g in (strong, weak)}
    assert opening[strong.name] @ scores > opening[weak.name] @ scores + 0.5
