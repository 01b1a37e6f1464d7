"""How learnable is the synthetic arena benchmark? Share of the achievable gain (ln 3 - Bayes) captured on lmsys/test by

1. a bag-of-words Davidson model on the quality-word frequencies (the right model family: a ceiling for few rows),
2. a bag-of-TOKENS Davidson model over every token of the tokenizer, told which tokens belong to A and to B (an
   oracle a transformer lacks) but not which tokens matter: the statistical ceiling of a learner that starts from
   nothing, for this many rows,
3. a tiny random-init transformer (the repo's tokenizer, ChatML layout, last-token classifier) trained for a fixed
   wall-clock budget with plain AdamW on the prepared lmsys rows (+ their A/B swaps).

    python -m bench.synth_learnability [--budget-s 420] [--hidden 64] [--layers 2] [--lr 3e-3] [--init-range 0.02]
                                       [--set key=value ...]

`--set` overrides go to the synth config (e.g. `--set text.quality_position_spread=3`). Writes
bench/results/synth_learnability.json. Not a test: the numbers depend on the machine's load.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from arena_dist.evaluate.metrics import log_loss

# The tiny model fixtures live with the tests.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "fixtures"))
RESULTS = Path(__file__).resolve().parent / "results" / "synth_learnability.json"
TEMPLATE, MAX_LENGTH = "chatml", 384  # the same layout for the token oracle and the transformer


def make_data(root: Path, overrides: list[str]) -> tuple[Path, Path]:
    from arena_dist.config import load_config
    from arena_dist.stages import prepare, synth

    config = load_config(synth.Config, None, [f"output_dir={root / 'synth'}", "progress=false", *overrides])
    synth.run(config)
    prepare.run(load_config(prepare.Config, root / "synth" / "prepare.yaml"))
    return root / "synth", root / "synth" / "dataset"


def read_test(synth_dir: Path) -> tuple[list[dict], np.ndarray, np.ndarray]:
    import csv

    csv.field_size_limit(1 << 30)
    with open(synth_dir / "lmsys" / "test.csv", newline="", encoding="utf-8") as h:
        rows = list(csv.DictReader(h))
    with open(synth_dir / "lmsys" / "test_answers.csv", newline="", encoding="utf-8") as h:
        answers = list(csv.DictReader(h))
    records, labels = [], []
    for row, answer in zip(rows, answers):
        label = [int(answer[k]) for k in ("winner_model_a", "winner_model_b", "winner_tie")].index(1)
        labels.append(label)
        records.append(dict(id=row["id"], source="test", prompt=json.loads(row["prompt"]),
                            response_a=json.loads(row["response_a"]), response_b=json.loads(row["response_b"]),
                            model_a=None, model_b=None, language=answer["language"], label=label, fold=0))
    p_true = np.array([[float(a[k]) for k in ("p_a", "p_b", "p_tie")] for a in answers])
    return records, np.array(labels), p_true


def bag_of_words(train: list[dict], test: list[dict], test_labels: np.ndarray) -> float:
    """Davidson model on (quality-word frequencies, log length) of A minus B, fitted by gradient descent."""
    from arena_dist.data import synth

    index = {w: i for i, w in enumerate(synth.QUALITY_WORDS)}

    def features(turns):
        v = np.zeros(len(index) + 1)
        words = [t for turn in turns if turn for t in turn.split()]
        for token in words:
            i = index.get(token.strip(synth._STRIP))
            if i is not None:
                v[i] += 1
        v[:-1] /= max(v[:-1].sum(), 1)
        v[-1] = math.log(max(len(words), 1))
        return v

    def design(rows):
        return np.array([features(r["response_a"]) - features(r["response_b"]) for r in rows])

    x, y = design(train), np.array([r["label"] for r in train])
    w, b, log_nu = np.zeros(x.shape[1]), 0.0, 0.0

    def probs(x):
        d = x @ w + b
        logits = np.stack([d / 2, -d / 2, np.full_like(d, log_nu)], 1)
        e = np.exp(logits - logits.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)

    for _ in range(3000):
        g = probs(x) - np.eye(3)[y]
        gd = (g[:, 0] - g[:, 1]) / 2
        w -= 0.5 * (x.T @ gd / len(x) + 1e-4 * w)
        b -= 0.5 * gd.mean()
        log_nu -= 0.5 * g[:, 2].mean()
    return log_loss(probs(design(test)), test_labels)


def token_bag_of_words(train: list[dict], test: list[dict], test_labels: np.ndarray, steps: int = 1500) -> float:
    """Davidson model on (share of each token id in A) - (share in B), every vocabulary entry a feature (Adam)."""
    import torch

    from arena_dist.formatting.encode import encode_records, segment_markers
    from arena_dist.formatting.templates import FormatConfig
    from arena_dist.formatting.tokenizer import load_tokenizer
    from arena_dist.models.segments import RESPONSE_A, RESPONSE_B, segment_ids

    tokenizer = load_tokenizer("local")
    fmt = FormatConfig(template=TEMPLATE, max_length=MAX_LENGTH)
    vocab = len(tokenizer)
    markers = segment_markers(tokenizer, fmt)  # the parts the model's segment embeddings see

    def features(records):
        out = np.zeros((len(records), vocab), dtype=np.float32)
        for row, encoded in enumerate(encode_records(records, tokenizer, fmt)):
            ids = np.asarray(encoded.input_ids)
            parts = segment_ids(torch.tensor([encoded.input_ids]), markers)[0].numpy()
            shares = [np.bincount(ids[parts == part], minlength=vocab) for part in (RESPONSE_A, RESPONSE_B)]
            out[row] = shares[0] / max(shares[0].sum(), 1) - shares[1] / max(shares[1].sum(), 1)
        return torch.tensor(out)

    x, y = features(train), torch.tensor([r["label"] for r in train])
    w, b, log_nu = (torch.zeros(n, requires_grad=True) for n in (vocab, 1, 1))
    optimizer = torch.optim.Adam([w, b, log_nu], lr=0.2)

    def logits(x):
        d = x @ w + b
        return torch.stack([d / 2, -d / 2, log_nu.expand_as(d)], 1)

    for _ in range(steps):
        loss = torch.nn.functional.cross_entropy(logits(x), y) + 1e-6 * (w ** 2).sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        return log_loss(torch.softmax(logits(features(test)), -1).numpy(), test_labels)


def transformer(train: list[dict], test: list[dict], test_labels: np.ndarray, args) -> dict:
    import torch

    from arena_dist.formatting.encode import encode_records
    from arena_dist.formatting.templates import FormatConfig
    from arena_dist.formatting.tokenizer import load_tokenizer
    from arena_dist.models.build import build_model
    from tiny_fixtures import tiny_model_config

    torch.manual_seed(0)
    tokenizer = load_tokenizer("local")
    fmt = FormatConfig(template=TEMPLATE, max_length=MAX_LENGTH)
    rows = encode_records(train, tokenizer, fmt) + encode_records(train, tokenizer, fmt, swap=True)
    test_rows, test_swapped = encode_records(test, tokenizer, fmt), encode_records(test, tokenizer, fmt, swap=True)
    cfg = tiny_model_config("llama", hidden_size=args.hidden, num_layers=args.layers, num_heads=4, num_kv_heads=2,
                            intermediate_size=2 * args.hidden, head_dropout=0.0, initializer_range=args.init_range)
    model = build_model(cfg, 3, tokenizer.pad_token_id)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)

    def batch(encoded):
        length = max(len(e.input_ids) for e in encoded)
        ids = torch.full((len(encoded), length), tokenizer.pad_token_id)
        mask = torch.zeros((len(encoded), length), dtype=torch.long)
        for i, e in enumerate(encoded):
            ids[i, : len(e.input_ids)] = torch.tensor(e.input_ids)
            mask[i, : len(e.input_ids)] = 1
        return ids, mask

    def predict(encoded):
        model.eval()
        out = np.zeros((len(encoded), 3))
        with torch.no_grad():
            for k in range(0, len(encoded), 64):
                ids, mask = batch(encoded[k:k + 64])
                out[k:k + 64] = torch.softmax(model(input_ids=ids, attention_mask=mask).logits, -1).numpy()
        model.train()
        return out

    rng, start, step, curve = np.random.default_rng(0), time.monotonic(), 0, []
    while time.monotonic() - start < args.budget_s:
        order = rng.permutation(len(rows))  # one epoch
        for k in range(0, len(rows) - args.batch + 1, args.batch):
            chunk = [rows[i] for i in order[k:k + args.batch]]
            ids, mask = batch(chunk)
            loss = torch.nn.functional.cross_entropy(model(input_ids=ids, attention_mask=mask).logits,
                                                     torch.tensor([e.label for e in chunk]))
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            step += 1
            if step % 200 == 0:
                curve.append({"step": step, "seconds": round(time.monotonic() - start, 1),
                              "test_log_loss": log_loss(predict(test_rows), test_labels)})
                print(f"[learnability] {curve[-1]}", flush=True)
            if time.monotonic() - start >= args.budget_s:
                break
    p = predict(test_rows)
    p_tta = (p + predict(test_swapped)[:, [1, 0, 2]]) / 2
    return {"steps": step, "batch": args.batch, "seconds": round(time.monotonic() - start, 1),
            "mean_tokens": float(np.mean([len(e.input_ids) for e in rows])), "curve": curve,
            "log_loss": log_loss(p, test_labels), "log_loss_swap_tta": log_loss(p_tta, test_labels)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget-s", type=float, default=420)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--init-range", type=float, default=0.02, help="HF initializer_range of the random init")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    from arena_dist.data.store import read_records

    with tempfile.TemporaryDirectory(prefix="ad-learn-") as tmp:
        synth_dir, dataset = make_data(Path(tmp), args.overrides)
        bayes = json.loads((synth_dir / "bayes.json").read_text())
        train = [r for r in read_records(dataset, "train") if r["source"] == "lmsys"]
        test, labels, p_true = read_test(synth_dir)
        gain = math.log(3) - log_loss(p_true, labels)
        share = lambda loss: (math.log(3) - loss) / gain  # noqa: E731
        bow = bag_of_words(train, test, labels)
        token_bow = token_bag_of_words(train, test, labels)
        net = transformer(train, test, labels, args)
    result = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "load_avg": os.getloadavg()},
        "synth_overrides": args.overrides, "train_rows": len(train), "test_rows": len(test),
        "bayes_log_loss": bayes["bayes_log_loss"], "achievable_gain": gain,
        "bag_of_words": {"log_loss": bow, "share_of_gain": share(bow)},
        "token_bag_of_words_segment_oracle": {"log_loss": token_bow, "share_of_gain": share(token_bow)},
        "tiny_transformer": {**net, "hidden": args.hidden, "layers": args.layers, "lr": args.lr,
                             "init_range": args.init_range,
                             "share_of_gain": share(net["log_loss"]),
                             "share_of_gain_swap_tta": share(net["log_loss_swap_tta"])},
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    from arena_dist.io import atomic_write_json

    atomic_write_json(RESULTS, result)
    print(json.dumps({k: result[k] for k in ("bayes_log_loss", "bag_of_words", "token_bag_of_words_segment_oracle")},
                     indent=1))
    print(f"tiny transformer: share of gain {result['tiny_transformer']['share_of_gain']:.3f} after "
          f"{net['steps']} steps; results: {RESULTS}")


if __name__ == "__main__":
    main()
