"""Build the repo's small local tokenizer: a byte-level BPE trained on locally generated text.

    python scripts/build_tokenizer.py [--out arena_dist/assets/tokenizer] [--vocab-size 4000] [--seed 0]

The corpus is generated here, seeded, so the build is deterministic (same bytes every run): English-like prose with
digits, punctuation and bits of code and markdown, some Cyrillic, CJK, Greek and Arabic text (so multilingual rows
tokenise into something better than raw bytes), and the template vocabulary (instruction, #Prompt / ##Model markers).
Byte-level BPE covers every Unicode string (no <unk> is ever produced). The chat-template markers of the
Llama-3, ChatML and Gemma-2 families are added as special tokens, each a single id.
"""

from __future__ import annotations

import argparse
import hashlib
import random
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from arena_dist.formatting.templates import DEFAULT_INSTRUCTION, OPTIONS  # noqa: E402
from arena_dist.formatting.tokenizer import (  # noqa: E402
    BOS_TOKEN,
    EOS_TOKEN,
    LOCAL_TOKENIZER_DIR,
    PAD_TOKEN,
    SPECIAL_TOKENS,
    UNK_TOKEN,
)

ENGLISH = """the of and to a in is it you that he was for on are with as I his they be at one have this from or had by
not word but what some we can out other were all there when up use your how said an each she which do their time if
will way about many then them write would like so these her long make thing see him two has look more day could go
come did number sound no most people my over know water than call first who may down side been now find any new work
part take get place made live where after back little only round man year came show every good me give our under name
very through just form sentence great think say help low line differ turn cause much mean before move right boy old
too same tell does set three want air well also play small end put home read hand port large spell add even land here
must big high such follow act why ask men change went light kind off need house picture try us again animal point
mother world near build self earth father head stand own page should country found answer school grow study still
learn plant cover food sun four between state keep eye never last let thought city tree cross farm hard start might
story saw far sea draw left late run while press close night real life few north open seem together next white
children begin got walk example ease paper group always music those both mark often letter until mile river car feet
care second book carry took science eat room friend began idea fish mountain stop once base hear horse cut sure watch
color face wood main enough plain girl usual young ready above ever red list though feel talk bird soon body dog
family direct pose leave song measure door product black short numeral class wind question happen complete ship area
half rock order fire south problem piece told knew pass since top whole king space heard best hour better true during
hundred five remember step early hold west ground interest reach fast verb sing listen six table travel less morning
ten simple several vowel toward war lay against pattern slow center love person money serve appear road map rain rule
govern pull cold notice voice unit power town fine certain fly fall lead cry dark machine note wait plan figure star
box noun field rest correct able pound done beauty drive stood contain front teach week final gave green oh quick
develop ocean warm free minute strong special mind behind clear tail produce fact street inch multiply nothing course
stay wheel full force blue object decide surface deep moon island foot system busy test record boat common gold
possible plane stead dry wonder laugh thousand ago ran check game shape equate hot miss brought heat snow tire bring
yes distant fill east paint language among model response assistant user prompt answer explain code function data
python list return value error example please sure however therefore because important following step solution
algorithm variable string integer output input result question helpful accurate detailed concise harmful safe""".split()

RUSSIAN = """и в не на я быть он с что а по это она этот к но они мы как из у который то за свой весь год от так о
для ты же все тот мочь вы человек такой его сказать только или еще бы себя один когда уже для вот кто да говорить
ответ вопрос модель помощь пример решение задача данные язык время работа жизнь день рука слово место лицо друг глаз
дело дом страна мир город система вода вопрос сторона ребенок история голова хорошо лучше объяснить написать код""".split()

CJK = (
    "的一是不了人我在有他这中大来上个国到说们为子和你地出道也时年得就那要下以生会自着去之过家学对可她里后小么心多天而能"
    "好都然没日于起还发成事只作当想看文无开手十用主行方又如前所本见经头面公同三已老从动两长知民样现分将外但身些与高意进"
    "把法此实回二理美点月明其种声全工己话儿者向情部正名定女问力机给等几很业最间新什打便位因重被走电四第门相次东政海口使"
    "模型回答问题解释代码数据语言"
)
KANA = "あいうえおかきくけこさしすせそたちつてとなにぬねのはひふへほまみむめもやゆよらりるれろわをんアイウエオカキクケコ"
GREEK = "το και της του η ο να σε με για από που είναι στο ένα απάντηση ερώτηση μοντέλο".split()
ARABIC = "في من على إلى أن هذا التي الذي كان مع عن هو نموذج إجابة سؤال شرح لغة".split()

TEMPLATE_TEXT = [
    DEFAULT_INSTRUCTION + "\n\n", *OPTIONS.values(), "user\n", "assistant\n\n", "model\n",
    "#Prompt1\n", "#Prompt2\n", "#Prompt3\n", "\n##Model A\n", "\n##Model B\n",
]
CODE = [
    "def {w}({v}):\n    return {v} + {n}\n",
    "for i in range({n}):\n    print(i, '{w}')\n",
    "```python\nimport numpy as np\nx = np.zeros(({n}, {n}))\n```\n",
    "{{\"{w}\": {n}, \"{v}\": [{n}, {m}]}}",
    "SELECT {w} FROM {v} WHERE id = {n};",
    "if ({v} > {n}) {{ {w}++; }} else {{ {w}--; }}",
    "- **{w}**: {v} ({n}%)\n",
]
PUNCT = [".", ",", "!", "?", ":", ";", " -", "...", ")", "\"", "'"]


def made_up_word(rng: random.Random) -> str:
    consonants, vowels = "bcdfghjklmnprstvwz", "aeiou"
    return "".join(rng.choice(consonants) + rng.choice(vowels) for _ in range(rng.randint(1, 4)))


def english_sentence(rng: random.Random) -> str:
    words = [rng.choice(ENGLISH) if rng.random() < 0.93 else made_up_word(rng) for _ in range(rng.randint(4, 22))]
    for i in range(len(words)):
        if rng.random() < 0.06:
            words[i] = str(rng.choice([rng.randint(0, 99), rng.randint(100, 99999), round(rng.random() * 100, 2)]))
    text = " ".join(words)
    text = text[0].upper() + text[1:]
    return text + rng.choice(PUNCT[:4])


def other_script_text(rng: random.Random) -> str:
    kind = rng.random()
    if kind < 0.4:
        return " ".join(rng.choice(RUSSIAN) for _ in range(rng.randint(4, 16))).capitalize() + "."
    if kind < 0.7:
        return "".join(rng.choice(CJK) for _ in range(rng.randint(6, 30))) + "。"
    if kind < 0.8:
        return "".join(rng.choice(KANA + CJK) for _ in range(rng.randint(6, 20))) + "。"
    if kind < 0.9:
        return " ".join(rng.choice(GREEK) for _ in range(rng.randint(4, 12))) + "."
    return " ".join(rng.choice(ARABIC) for _ in range(rng.randint(4, 12))) + "."


def corpus(seed: int, lines: int) -> list[str]:
    rng = random.Random(seed)
    out = list(TEMPLATE_TEXT) * 400
    for _ in range(lines):
        roll = rng.random()
        if roll < 0.70:
            out.append(" ".join(english_sentence(rng) for _ in range(rng.randint(1, 4))))
        elif roll < 0.85:
            out.append(other_script_text(rng))
        elif roll < 0.95:
            template = rng.choice(CODE)
            out.append(template.format(w=rng.choice(ENGLISH), v=made_up_word(rng), n=rng.randint(0, 512),
                                       m=rng.randint(0, 9)))
        else:
            turn = rng.randint(1, 3)
            out.append(f"#Prompt{turn}\n{english_sentence(rng)}\n##Model A\n{english_sentence(rng)}\n"
                       f"##Model B\n{english_sentence(rng)}\n")
    return out


def build(out_dir: Path, vocab_size: int, seed: int, lines: int) -> Path:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE(unk_token=None))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(corpus(seed, lines), trainer=trainer)

    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        unk_token=UNK_TOKEN,
        pad_token=PAD_TOKEN,
        additional_special_tokens=[t for t in SPECIAL_TOKENS if t not in (BOS_TOKEN, EOS_TOKEN, UNK_TOKEN, PAD_TOKEN)],
        model_max_length=1 << 20,
        padding_side="right",
        clean_up_tokenization_spaces=False,
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    wrapped.save_pretrained(str(out_dir))
    return out_dir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--out", type=Path, default=LOCAL_TOKENIZER_DIR)
    parser.add_argument("--vocab-size", type=int, default=4000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lines", type=int, default=40_000)
    args = parser.parse_args(argv)
    out = build(args.out, args.vocab_size, args.seed, args.lines)
    for path in sorted(out.iterdir()):
        digest = hashlib.sha256(path.read_bytes()).hexdigest()[:12]
        print(f"{path}  {path.stat().st_size:>8} bytes  sha256 {digest}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
