"""Shared helpers for the golden-fixture scripts in tools/golden/.

Everything here is deterministic: fixed seeds, float32, CPU only, one thread.
The recorded fixtures are compared by the Rust test-suite with explicit
tolerances, so floats are written with the shortest representation that
round-trips through float32 whenever the value is exactly a float32 (which is
the case for every model output); other floats keep their full repr.
"""

from __future__ import annotations

import json
import math
import os
import platform
import random
import sys
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch

REPO_ROOT = Path(__file__).resolve().parents[2]
FIXTURES = REPO_ROOT / "tests" / "fixtures"

SEED = 1234


# ---------------------------------------------------------------------------
# Environment / determinism
# ---------------------------------------------------------------------------

def setup(seed: int = SEED) -> None:
    """Seed every RNG, force float32 on CPU and keep CPU use modest."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    torch.set_num_threads(1)
    torch.set_default_dtype(torch.float32)
    seed_all(seed)
    import transformers

    transformers.logging.set_verbosity_error()


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def meta(script: str, **extra: Any) -> dict:
    """The "meta" object carried by every fixture JSON."""
    import safetensors
    import tokenizers
    import transformers

    out = {
        "script": f"tools/golden/{script}",
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "tokenizers": tokenizers.__version__,
        "safetensors": safetensors.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "seed": SEED,
        "dtype": "float32",
        "device": "cpu",
    }
    try:
        import sentence_transformers

        out["sentence_transformers"] = sentence_transformers.__version__
    except ImportError:  # pragma: no cover - optional
        pass
    out.update(extra)
    return out


def require_transformers_5(script: str) -> None:
    """Exit unless transformers 5.x is installed (the pinned reference, requirements.txt)."""
    import transformers

    major = int(transformers.__version__.split(".")[0])
    if major < 5:
        sys.exit(
            f"{script} records with transformers 5.x (pinned 5.25.0, tools/golden/requirements.txt); "
            f"this is {transformers.__version__}"
        )


def hub_version() -> dict:
    """{"huggingface_hub": version}, the Hub client the 5.25 scripts add to meta."""
    import huggingface_hub

    return {"huggingface_hub": huggingface_hub.__version__}


# ---------------------------------------------------------------------------
# JSON conversion and writing
# ---------------------------------------------------------------------------

def _short_float(x: float) -> float:
    """Shortest float whose float32 value equals x, if x is exactly a float32."""
    if not math.isfinite(x):
        raise ValueError(f"non-finite float in fixture: {x}")
    f32 = np.float32(x)
    if float(f32) == x:
        return float(str(f32))
    return x


def to_jsonable(obj: Any) -> Any:
    """Convert tensors, numpy values, tuples etc. into plain JSON values."""
    if isinstance(obj, torch.Tensor):
        return to_jsonable(obj.detach().cpu().numpy())
    if isinstance(obj, np.ndarray):
        if obj.dtype.kind == "f":
            return to_jsonable(obj.astype(np.float32).tolist())
        return obj.tolist()
    if isinstance(obj, np.generic):
        return to_jsonable(obj.item())
    if isinstance(obj, bool) or obj is None or isinstance(obj, (int, str)):
        return obj
    if isinstance(obj, float):
        return _short_float(obj)
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if hasattr(obj, "items"):  # BatchEncoding and friends
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    raise TypeError(f"cannot serialise {type(obj)!r}")


def _is_scalar(v: Any) -> bool:
    return v is None or isinstance(v, (bool, int, float, str))


def _dump(obj: Any, indent: int, level: int) -> str:
    """Pretty JSON, but lists of scalars (and lists of such lists) on one line."""
    pad = " " * (indent * (level + 1))
    end = " " * (indent * level)
    if isinstance(obj, dict):
        if not obj:
            return "{}"
        items = [f"{pad}{json.dumps(k, ensure_ascii=False)}: {_dump(v, indent, level + 1)}" for k, v in obj.items()]
        return "{\n" + ",\n".join(items) + "\n" + end + "}"
    if isinstance(obj, list):
        if all(_is_scalar(v) for v in obj) or _is_numeric_tree(obj):
            return json.dumps(obj, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
        items = [pad + _dump(v, indent, level + 1) for v in obj]
        return "[\n" + ",\n".join(items) + "\n" + end + "]"
    return json.dumps(obj, ensure_ascii=False, allow_nan=False)


def _is_numeric_tree(obj: Any) -> bool:
    if isinstance(obj, list):
        return all(_is_numeric_tree(v) for v in obj)
    return obj is None or (isinstance(obj, (int, float)) and not isinstance(obj, bool))


def write_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = _dump(to_jsonable(obj), 1, 0) + "\n"
    json.loads(text)  # sanity: valid JSON
    path.write_text(text, encoding="utf-8")
    shown = path.relative_to(REPO_ROOT) if path.is_relative_to(REPO_ROOT) else path
    print(f"wrote {shown} ({len(text.encode()) / 1024:.1f} KiB)", file=sys.stderr)


# ---------------------------------------------------------------------------
# Shared test texts
# ---------------------------------------------------------------------------

# Words that must be whole tokens in the tiny WordPiece vocab. All lowercase.
COMMON_WORDS = """
the of and to a in is it you that he was for on are with as i his they be at one have
this from or had by hot word but what some we can out other were all there when up use
your how said an each she which do their time if will way about many then them write
would like so these her long make thing see him two has look more day could go come did
number sound no most people my over know water than call first who may down side been
now find any new work part take get place made live where after back little only round
man year came show every good me give our under name very through just form sentence
great think say help low line differ turn cause much mean before move right boy old too
same tell does set three want air well also play small end put home read hand port large
spell add even land here must big high such follow act why ask men change went light
kind off need house picture try us again animal point mother world near build self earth
father john mary peter smith wolf paris london berlin york google apple company weather
today sunny nice lives works capital france england germany sports politics technology
business happy sad movie lazy fox jumps brown hello quick dog book reads am text example
""".split()


def dedupe(seq: Iterable[str]) -> list[str]:
    seen: set[str] = set()
    out = []
    for s in seq:
        if s not in seen:
            seen.add(s)
            out.append(s)
    return out


# ---------------------------------------------------------------------------
# Tiny tokenizers
# ---------------------------------------------------------------------------

BERT_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
ROBERTA_SPECIALS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
TOKENIZER_MAX_LENGTH = 128


def wordpiece_vocab() -> list[str]:
    """The tiny shared WordPiece vocab: specials, characters, ##pieces, words."""
    import string

    chars = list(string.ascii_lowercase) + list(string.digits) + list(string.punctuation)
    pieces = ["##" + c for c in string.ascii_lowercase + string.digits]
    vocab = dedupe(BERT_SPECIALS + chars + pieces + COMMON_WORDS)
    assert vocab[0] == "[PAD]"
    return vocab


def make_wordpiece_tokenizer(workdir: Path, cls_name: str = "BertTokenizerFast"):
    """A Bert/DistilBert tokenizer over the tiny vocab (lower-casing).

    transformers 5.x: `BertTokenizerFast` is an alias of `BertTokenizer` (a
    `TokenizersBackend`) whose constructor takes `vocab=` (a dict) and silently ignores
    `vocab_file=` (it would build a 5-token vocab of the specials). save_pretrained
    then writes tokenizer.json and tokenizer_config.json only (no vocab.txt).
    """
    import transformers

    vocab = {tok: i for i, tok in enumerate(wordpiece_vocab())}
    cls = getattr(transformers, cls_name)
    tok = cls(
        vocab=vocab,
        do_lower_case=True,
        model_max_length=TOKENIZER_MAX_LENGTH,
    )
    assert len(tok) == len(vocab), len(tok)
    assert tok.convert_tokens_to_ids(BERT_SPECIALS) == [0, 1, 2, 3, 4]
    return tok


def roberta_corpus() -> list[str]:
    """Training corpus for the tiny byte-level BPE: test texts plus the word list."""
    lines = list(ALL_TEXTS)
    words = COMMON_WORDS
    for i in range(0, len(words), 12):
        chunk = " ".join(words[i : i + 12])
        lines.append(chunk)
        lines.append(chunk.capitalize() + ".")
    return lines


def make_roberta_tokenizer(workdir: Path, vocab_size: int = 400):
    """Train a tiny byte-level BPE and wrap it as RobertaTokenizerFast.

    transformers 5.x: `RobertaTokenizerFast` is an alias of `RobertaTokenizer` (a
    `TokenizersBackend`) whose constructor takes `vocab=` / `merges=` and ignores
    `vocab_file=` / `merges_file=`; save_pretrained writes no vocab.json / merges.txt.
    4.x's RobertaTokenizerFast made `<mask>` an AddedToken with lstrip=True (as in the
    Hub's roberta-base tokenizer.json); 5.x's RobertaTokenizer leaves it lstrip=False, so
    it is passed explicitly and tokenizer.json keeps the 4.46.3 behaviour ("the <mask>"
    is `the`, `<mask>`: the space before the mask belongs to it).
    """
    from tokenizers import AddedToken, ByteLevelBPETokenizer
    from transformers import RobertaTokenizerFast

    workdir.mkdir(parents=True, exist_ok=True)
    bpe = ByteLevelBPETokenizer(add_prefix_space=False, trim_offsets=True)
    bpe.train_from_iterator(
        roberta_corpus(),
        vocab_size=vocab_size,
        min_frequency=1,
        special_tokens=ROBERTA_SPECIALS,
        show_progress=False,
    )
    model = json.loads(bpe.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    tok = RobertaTokenizerFast(
        vocab=dict(model["vocab"]),
        merges=merges,
        mask_token=AddedToken("<mask>", lstrip=True, rstrip=False, normalized=False, special=True),
        model_max_length=TOKENIZER_MAX_LENGTH,
    )
    assert tok.convert_tokens_to_ids(ROBERTA_SPECIALS) == [0, 1, 2, 3, 4]
    assert len(tok) == vocab_size, len(tok)
    return tok


# ---------------------------------------------------------------------------
# Shared texts for the encoder fixtures
# ---------------------------------------------------------------------------

MODEL_TEXTS = [
    "Hello world!",
    "John lives in Paris.",
    "The quick brown fox jumps over the lazy dog.",
]
MODEL_PAIR = ("Is the weather nice today?", "It is sunny in London.")

CLS_TEXT = "I am happy today."
CLS_TEXTS = [
    "I am happy today.",
    "This movie is sad.",
    "John works for Google in London and the weather is nice.",
]
CLS_PAIR = {"text": "John lives in Paris.", "text_pair": "John lives in France."}

ZS_TEXT = "John works for Google and loves technology."
ZS_LABELS = ["technology", "sports", "politics"]
ZS_TEMPLATE = "This text is about {}."

NER_TEXTS = [
    "My name is John Smith and I live in New York.",
    "Wolfgang and Mary work for Google in Berlin.",
]

QA_QUESTION = "Where does John live?"
QA_CONTEXT = "John lives in Paris and works for Google. Mary lives in London."


def long_context(n_words: int = 300, seed: int = SEED) -> str:
    """~n_words of vocab words in sentences, with the answer in the middle."""
    rng = random.Random(seed)
    words = [w for w in COMMON_WORDS if w.isalpha()]
    sentences = []
    count = 0
    while count < n_words:
        n = rng.randint(6, 14)
        s = [rng.choice(words) for _ in range(n)]
        sentences.append(" ".join(s).capitalize() + ".")
        count += n
        if len(sentences) == 12:
            sentences.append("John lives in Paris and works for Google.")
            count += 8
    return " ".join(sentences)


ALL_TEXTS = dedupe(
    MODEL_TEXTS
    + list(MODEL_PAIR)
    + CLS_TEXTS
    + [CLS_PAIR["text"], CLS_PAIR["text_pair"], ZS_TEXT]
    + [ZS_TEMPLATE.format(x) for x in ZS_LABELS]
    + NER_TEXTS
    + [QA_QUESTION, QA_CONTEXT]
)


# ---------------------------------------------------------------------------
# Decoder (causal LM) helpers, used by make_decoders.py and make_smollm2.py
# ---------------------------------------------------------------------------

# Special tokens of the tiny byte-level BPE used by the decoder fixtures, in id order.
DECODER_SPECIALS = ["<pad>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"]
DECODER_PAD, DECODER_BOS, DECODER_EOS, DECODER_IM_START, DECODER_IM_END = range(5)

# A plain ChatML template (no BOS: the rendered text is tokenized with
# add_special_tokens=False, as apply_chat_template(tokenize=True) does).
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

DECODER_PROMPTS = [
    "John lives in Paris and works for Google. The weather is nice today.",
    "Hello world!",
]
DECODER_CHAT = [{"role": "user", "content": "Hello world!"}]
DECODER_CLS_TEXTS = [
    "I am happy today.",
    "This movie is sad.",
    "John works for Google in London and the weather is nice.",
]


def decoder_corpus() -> list[str]:
    """Training corpus of the tiny decoder BPE: test texts, prompts and word list."""
    lines = roberta_corpus() + DECODER_PROMPTS + DECODER_CLS_TEXTS
    lines += ["user", "assistant", "system", "You are a helpful assistant."]
    return lines


def make_bytelevel_bpe_tokenizer(vocab_size: int = 352, add_bos: bool = True, padding_side: str = "left"):
    """A tiny byte-level BPE wrapped as PreTrainedTokenizerFast.

    ids 0..4 are DECODER_SPECIALS; bos `<s>`, eos `</s>`, pad `<pad>`,
    unk none (byte-level BPE cannot produce unknowns). With add_bos the
    post-processor prepends `<s>` (Llama style); without, it is GPT-2's ByteLevel.
    The tokenizer carries the ChatML CHATML_TEMPLATE.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=1,
        special_tokens=DECODER_SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(decoder_corpus(), trainer=trainer)
    if add_bos:
        bpe.post_processor = processors.TemplateProcessing(
            single="<s> $A:0",
            pair="<s> $A:0 <s>:1 $B:1",
            special_tokens=[("<s>", DECODER_BOS)],
        )
    else:
        bpe.post_processor = processors.ByteLevel(trim_offsets=False)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        additional_special_tokens=["<|im_start|>", "<|im_end|>"],
        model_max_length=TOKENIZER_MAX_LENGTH,
        padding_side=padding_side,
        clean_up_tokenization_spaces=False,
        chat_template=CHATML_TEMPLATE,
    )
    assert tok.convert_tokens_to_ids(DECODER_SPECIALS) == list(range(len(DECODER_SPECIALS)))
    assert len(tok) == vocab_size, len(tok)
    return tok


@torch.no_grad()
def perturb_decoder(model, std: float = 0.05, gain_std: float = 0.1, order: list[str] | None = None) -> None:
    """Randomise every bias and every 1-D norm weight (gain) of a decoder.

    As make_encoders.perturb: init leaves biases at 0 and norm gains at 1 (0 for
    Gemma's `1 + w` RMSNorm), which would hide a loader that drops them.
    `order` (parameter names) sets the order the random draws are made in; the
    default is model.named_parameters() order.
    """
    params = dict(model.named_parameters())
    names = list(params) if order is None else list(order)
    assert sorted(names) == sorted(params), "order must name every parameter once"
    for name in names:
        p = params[name]
        if name.endswith(".bias"):
            p.normal_(0.0, std)
        elif p.dim() == 1 and name.endswith(".weight"):
            p.copy_(1.0 + gain_std * torch.randn_like(p))


def generate_position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """position_ids as transformers 4.46.3's GenerationMixin.prepare_inputs_for_generation made them (pads: 1).

    5.x fills pads with 0 instead; make_decoders.py asks transformers itself
    (`_prepare_position_ids_for_generation`).
    """
    position_ids = attention_mask.long().cumsum(-1) - 1
    position_ids.masked_fill_(attention_mask == 0, 1)
    return position_ids


def mask_pads(values: Any, attention_mask: torch.Tensor) -> list:
    """values[b][t] (any trailing shape), with None where attention_mask[b][t] == 0."""
    vals = to_jsonable(values)
    mask = attention_mask.tolist()
    return [[v if m else None for v, m in zip(row, mrow)] for row, mrow in zip(vals, mask)]


def inf_to_str(obj: Any) -> Any:
    """Like to_jsonable, but -inf / inf / nan become the strings "-inf" / "inf" / "nan"."""
    if isinstance(obj, (torch.Tensor, np.ndarray)):
        return _nonfinite_list(obj)
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    if isinstance(obj, dict):
        return {k: inf_to_str(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [inf_to_str(v) for v in obj]
    return obj


def _nonfinite_list(t: Any) -> list:
    arr = t.detach().cpu().numpy() if isinstance(t, torch.Tensor) else np.asarray(t)
    if arr.dtype.kind != "f":
        return arr.tolist()

    def conv(x):
        if isinstance(x, list):
            return [conv(v) for v in x]
        if math.isfinite(x):
            return _short_float(float(np.float32(x)))
        return str(float(x))  # "-inf", "inf", "nan"

    return conv(arr.astype(np.float32).tolist())


def rope_info(model) -> dict | None:
    """inv_freq and attention_scaling of the first rotary-embedding module, if any."""
    for module in model.modules():
        if type(module).__name__.endswith("RotaryEmbedding") and hasattr(module, "inv_freq"):
            return {
                "module": type(module).__name__,
                "rope_type": getattr(module, "rope_type", "default"),
                "inv_freq": module.inv_freq,
                "attention_scaling": float(getattr(module, "attention_scaling", 1.0)),
            }
    return None
