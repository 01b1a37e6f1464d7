"""The transformers generation backend on tiny hub-layout checkpoints: chat templates, left padding, length-sorted
batches, seeded sampling, multi-turn conversations. The models are random, so the text is gibberish: the mechanics
are what is checked."""

import sys
from pathlib import Path

import pytest

from arena_dist.generate.backend import SamplingSettings, generation_batches, pad_left

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # hub_checkpoints

# The first tokens of a rendered user turn in each family's real chat template.
FAMILY_START = {
    "llama": ["<|begin_of_text|>", "<|start_header_id|>", "user", "<|end_header_id|>"],
    "qwen2": ["<|im_start|>", "user"],
    "gemma2": ["<bos>", "<start_of_turn>", "user"],
}
# ... and the generation prompt every rendered prompt must end with.
FAMILY_END = {
    "llama": ["<|start_header_id|>", "assistant", "<|end_header_id|>"],
    "qwen2": ["<|im_start|>", "assistant"],
    "gemma2": ["<start_of_turn>", "model"],
}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    from hub_checkpoints import build_checkpoint

    root = tmp_path_factory.mktemp("generators")
    return {family: build_checkpoint(root, family, "causal_lm") for family in FAMILY_START}


@pytest.fixture(scope="module")
def generators(checkpoints):
    from arena_dist.generate.backend import TransformersGenerator

    return {family: TransformersGenerator(str(path)) for family, path in checkpoints.items()}


def tokens(generator, ids):
    return generator.tokenizer.convert_ids_to_tokens(ids)


def ends_with(sequence, suffix):
    """`suffix` ends the sequence, allowing whitespace tokens after it (the templates end in a newline)."""
    stripped = list(sequence)
    while stripped and stripped[-1].strip("Ċ\n ") == "":
        stripped.pop()
    return stripped[-len(suffix):] == suffix


CONVERSATIONS = [
    [{"role": "user", "content": "hi"}],
    [{"role": "user", "content": "a much longer question, with many more words than the first one has"}],
    [{"role": "user", "content": "first turn"}, {"role": "assistant", "content": "an earlier reply"},
     {"role": "user", "content": "second turn"}],
]


@pytest.mark.parametrize("family", list(FAMILY_START))
def test_each_generator_sees_its_own_chat_template(generators, family):
    generator = generators[family]
    settings = SamplingSettings(max_new_tokens=4, min_new_tokens=1, max_tokens=4096)
    out = generator.generate_detailed(CONVERSATIONS, settings)
    assert len(out) == 3
    for item, conversation in zip(out, CONVERSATIONS):
        seen = tokens(generator, item.prompt_ids)  # what the model was fed, padding removed
        assert seen[:len(FAMILY_START[family])] == FAMILY_START[family], seen[:6]
        assert ends_with(seen, FAMILY_END[family]), seen[-6:]
        assert item.prompt_ids == generator.encode(conversation)
        assert 1 <= item.new_tokens <= 4
    # the multi-turn prompt holds the earlier assistant reply inside the family's own turn markers
    text = generator.tokenizer.decode(out[2].prompt_ids)
    assert "first turn" in text and "an earlier reply" in text and "second turn" in text
    assert text.index("first turn") < text.index("an earlier reply") < text.index("second turn")
    other = {"llama": "<|im_start|>", "qwen2": "<start_of_turn>", "gemma2": "<|start_header_id|>"}[family]
    assert other not in text


def test_sampling_is_seeded(generators):
    generator = generators["qwen2"]
    settings = SamplingSettings(temperature=1.0, top_p=1.0, max_new_tokens=8, min_new_tokens=8, seed=3)
    first = generator.generate(CONVERSATIONS, settings)
    assert generator.generate(CONVERSATIONS, settings) == first
    other_seed = generator.generate(CONVERSATIONS, SamplingSettings(**{**settings.__dict__, "seed": 4}))
    assert other_seed != first


def test_left_padded_batches_give_the_rows_unbatched_replies(generators):
    """Greedy replies in one left-padded batch equal each row generated alone: the padding is on the left and
    masked, so it changes nothing."""
    generator = generators["llama"]
    greedy = SamplingSettings(temperature=0.0, max_new_tokens=6, min_new_tokens=6, max_tokens=100_000)
    before = generator.padding
    batched = generator.generate_detailed(CONVERSATIONS, greedy)
    after = generator.padding
    assert after.batches == before.batches + 1  # one batch ...
    assert after.padded_tokens - before.padded_tokens > after.real_tokens - before.real_tokens  # ... really padded
    alone = [generator.generate_detailed([conversation], greedy)[0] for conversation in CONVERSATIONS]
    assert [b.text for b in batched] == [a.text for a in alone]


def test_pad_left_puts_padding_before_the_prompt():
    ids, mask = pad_left([[5, 6, 7], [8], []], pad_id=0)
    assert ids == [[5, 6, 7], [0, 0, 8], [0, 0, 0]]
    assert mask == [[1, 1, 1], [0, 0, 1], [0, 0, 0]]


def test_generation_batches_sort_by_length_and_count_the_new_tokens():
    lengths = [50, 3, 40, 4, 41, 5, 2]
    batches = generation_batches(lengths, max_new_tokens=10, max_tokens=60)
    assert sorted(i for batch in batches for i in batch) == list(range(len(lengths)))
    flat = [i for batch in batches for i in batch]
    assert [lengths[i] for i in flat] == sorted(lengths)  # ascending length, batch after batch
    for batch in batches:  # every row at the batch's longest prompt plus the new tokens fits the budget
        assert len(batch) == 1 or len(batch) * (max(lengths[i] for i in batch) + 10) <= 60
    assert batches[0] == [6, 1, 3, 5]  # the four short prompts together: 4 x (5 + 10) = 60
    assert [lengths[i] for i in batches[-1]] == [50]


def test_conversation_at_gives_the_model_its_own_earlier_replies():
    from arena_dist.generate.worker import conversation_at

    assert conversation_at(["q1", "q2", "q3"], ["r1", "r2"], 2) == [
        {"role": "user", "content": "q1"}, {"role": "assistant", "content": "r1"},
        {"role": "user", "content": "q2"}, {"role": "assistant", "content": "r2"},
        {"role": "user", "content": "q3"}]
    assert conversation_at(["q1", "q2"], [], 0) == [{"role": "user", "content": "q1"}]


def test_pair_generator_answers_every_turn_with_the_rows_two_models(checkpoints):
    """Pool rows with multi-turn prompts (their old responses are ignored): one reply per prompt turn from each
    of the row's two generators, the pair drawn by `pick_pair`, the same replies when the shard is done again."""
    from arena_dist.generate.pairing import pick_pair
    from arena_dist.generate.worker import GeneratorSpec, PairGenerator

    specs = [GeneratorSpec(family, str(path)) for family, path in checkpoints.items()]
    settings = SamplingSettings(temperature=1.0, max_new_tokens=4, min_new_tokens=2, max_tokens=4096)
    worker = PairGenerator(specs, settings, seed=11)
    records = [{"id": f"pool/{i}", "prompt": ["first question"] + ["and a follow-up"] * (i % 3),
                "response_a": ["old"], "response_b": ["older"], "language": "en"} for i in range(9)]
    out = worker.answer(records, key=2)
    assert out["ids"] == [r["id"] for r in records] and out["language"] == ["en"] * 9
    for row, record in enumerate(records):
        pair = (out["model_a"][row], out["model_b"][row])
        assert pair == pick_pair(record["id"], list(checkpoints), seed=11)
        assert len(out["response_a"][row]) == len(out["response_b"][row]) == len(record["prompt"])
        assert "old" not in out["response_a"][row] + out["response_b"][row]
    assert out["stats"]["rows"] == 9 and out["stats"]["new_tokens"] >= 2 * 2 * sum(len(r["prompt"]) for r in records)
    assert out["stats"]["padded_prompt_tokens"] >= out["stats"]["prompt_tokens"] > 0
    replies = [text for row in out["response_a"] + out["response_b"] for text in row]
    assert out["stats"]["empty_replies"] == sum(not text.strip() for text in replies)
    assert worker.answer(records, key=2) == out  # seeded: a shard done again (after a lost actor) is the same


def test_top_k_is_always_passed_and_off_by_default(tmp_path):
    """transformers applies a top_k of 50 (or the model's generation config's) unless told otherwise: the backend
    passes the configured one, 0 (off) by default. The synthetic world's strong model opens every reply with one of
    40 quality words of unequal probability: top_k 3 leaves 3 of them, no top_k many more."""
    from arena_dist.data import synth
    from arena_dist.data.synth_generators import GENERATORS, write_generator
    from arena_dist.generate.backend import TransformersGenerator
    from arena_dist.stages.generate import SamplingSection

    assert SamplingSettings().top_k == 0 and SamplingSection().top_k == 0
    generator = TransformersGenerator(str(write_generator(tmp_path / "strong", GENERATORS[0], synth.SynthSpec())))
    conversations = [[{"role": "user", "content": "the time of day?"}]] * 64
    openings = {}
    for top_k in (3, 0):
        settings = SamplingSettings(temperature=1.0, top_p=1.0, top_k=top_k, max_new_tokens=6, min_new_tokens=6)
        openings[top_k] = {reply.split()[0] for reply in generator.generate(conversations, settings)}
    assert len(openings[3]) <= 3 and len(openings[0]) > 10
