"""Tiny GGUF files from the tiny HF decoder fixtures, and what transformers makes of them.

Writes tests/fixtures/gguf/
    tiny-{llama,qwen2,qwen3,gemma2,phi3}.gguf  f32 tensors (lossless copies of the HF fixtures)
    tiny-llama-{q8_0,q4_0,q4_1,q5_0,q5_1}.gguf  tiny-llama in block formats (gguf-py quantizes)
    tiny-llama-spm.gguf                      tiny-llama, f16 matrices, sentencepiece-style
                                             tokenizer (tokenizer.ggml.model = "llama")
    expected.json                            last-position logits and greedy ids per file,
                                             ids / decodes of ~50 strings for the spm tokenizer

The files follow llama.cpp's convert_hf_to_gguf.py conventions (gguf-py constants for
tensor names and metadata keys): llama's attn_q / attn_k rows permuted per head
(`w.reshape(n_head, 2, rows // n_head // 2, cols).swapaxes(1, 2)`), Gemma2's RMSNorm
weights stored with the +1 folded in, Phi-3's fused qkv_proj / gate_up_proj kept fused
as attn_qkv / ffn_up, no output.weight where the HF model ties its head, 1-D tensors
(norms, biases) always f32, block formats only for matrices whose rows are whole blocks
(as llama.cpp's quantize falls back otherwise). `rope.freq_base` is the fixture's
`config.json["rope_parameters"]["rope_theta"]` (transformers 5.x configs keep no top-level
rope_theta); only rope_type "default" is representable here.

The reference is transformers 5.25.0's own GGUF loading, `from_pretrained(dir, gguf_file=name)`
(its legacy loader for these architectures: gguf-py dequantizes every tensor to float32).
It builds the config from the file, but reads fewer keys than llama.cpp: where a file states
something 5.25 ignores (gemma2's soft-capping and query scale, qwen3's head size) the config
it built is corrected before the weights are loaded, and the entry's `config_overrides` says
what 5.25 had and what was used (see meta.notes).

Usage:  python tools/golden/make_gguf.py           # every file and expected.json
        python tools/golden/make_gguf.py --qwen3   # tiny-qwen3.gguf and its expected.json entry only
"""

from __future__ import annotations

import importlib.metadata
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from common import FIXTURES  # noqa: E402

SCRIPT = "make_gguf.py"
OUT = FIXTURES / "gguf"
FAMILIES = ["llama", "qwen2", "qwen3", "gemma2", "phi3"]
QUANTS = ["Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1"]
# llama.cpp's general.file_type (LlamaFileType) per format
FILE_TYPE = {"F32": 0, "F16": 1, "Q4_0": 2, "Q4_1": 3, "Q8_0": 7, "Q5_0": 8, "Q5_1": 9}
PROMPTS = [
    [1, 45, 200, 17, 301, 9],
    [1, 320, 5, 77, 78, 79, 80, 81, 150, 2, 33],
    [1, 100],
]
GREEDY_NEW = 8

HF_TO_GGUF = {
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "self_attn.qkv_proj": "attn_qkv",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.gate_up_proj": "ffn_up",  # phi3: fused [gate; up]
    "mlp.down_proj": "ffn_down",
    "input_layernorm": "attn_norm",
    "self_attn.q_norm": "attn_q_norm",  # qwen3
    "self_attn.k_norm": "attn_k_norm",
}
PER_ARCH = {
    "gemma2": {
        "post_attention_layernorm": "post_attention_norm",
        "pre_feedforward_layernorm": "ffn_norm",
        "post_feedforward_layernorm": "post_ffw_norm",
    },
}


def gguf_name(arch: str, hf: str) -> str:
    top = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
           "lm_head.weight": "output.weight"}
    if hf in top:
        return top[hf]
    parts = hf.split(".")
    assert parts[:2] == ["model", "layers"], hf
    layer, module, suffix = parts[2], ".".join(parts[3:-1]), parts[-1]
    table = {**HF_TO_GGUF, "post_attention_layernorm": "ffn_norm", **PER_ARCH.get(arch, {})}
    return f"blk.{layer}.{table[module]}.{suffix}"


def permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's LlamaModel.permute: rotary halves → interleaved pairs, per head."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def load_hf(family: str):
    from safetensors.numpy import load_file

    folder = FIXTURES / f"tiny-{family}"
    config = json.loads((folder / "config.json").read_text())
    tensors = load_file(str(folder / "model.safetensors"))
    return folder, config, tensors


def rope_theta(config: dict) -> float:
    """The RoPE base of a 5.x config.json: `rope_parameters.rope_theta` (no top-level rope_theta)."""
    rope = config.get("rope_parameters")
    if not isinstance(rope, dict) or "rope_theta" not in rope:
        sys.exit(f"{config.get('model_type')}: config.json has no rope_parameters.rope_theta; "
                 "rebuild the tiny decoders with make_decoders.py (transformers 5.x) first")
    assert rope.get("rope_type", "default") == "default", rope  # GGUF rope scaling is not written here
    return float(rope["rope_theta"])


def gguf_tensors(arch: str, config: dict, tensors: dict) -> dict[str, np.ndarray]:
    heads, kv = config["num_attention_heads"], config["num_key_value_heads"]
    out = {}
    for hf, w in sorted(tensors.items()):
        w = w.astype(np.float32)
        if hf == "lm_head.weight" and config.get("tie_word_embeddings", arch == "gemma2" or None):
            continue  # tied: llama.cpp writes no output.weight
        name = gguf_name(arch, hf)
        if arch == "llama" and name.endswith("attn_q.weight"):
            w = permute(w, heads)
        if arch == "llama" and name.endswith("attn_k.weight"):
            w = permute(w, kv)
        if arch == "gemma2" and name.endswith("norm.weight"):
            w = w + 1.0
        out[name] = np.ascontiguousarray(w)
    return out


def gpt2_vocab(folder: Path):
    """tokens / token_type / merges of the fixture's byte-level BPE (llama.cpp's gpt2 vocab)."""
    tok = json.loads((folder / "tokenizer.json").read_text())
    vocab = tok["model"]["vocab"]
    tokens = [None] * len(vocab)
    for t, i in vocab.items():
        tokens[i] = t
    types = [1] * len(tokens)
    for a in tok["added_tokens"]:
        if a["id"] < len(tokens):
            types[a["id"]] = 3 if a["special"] else 4
    merges = [m if isinstance(m, str) else " ".join(m) for m in tok["model"]["merges"]]
    return tokens, types, merges


def write_gguf(path: Path, arch: str, config: dict, tensors: dict, qtype: str, vocab: dict) -> None:
    import gguf
    from gguf.quants import quantize

    w = gguf.GGUFWriter(str(path), arch)
    w.add_name(f"tiny-{arch}")
    w.add_file_type(FILE_TYPE[qtype])
    hidden, heads = config["hidden_size"], config["num_attention_heads"]
    head_dim = config.get("head_dim") or hidden // heads
    w.add_context_length(config["max_position_embeddings"])
    w.add_embedding_length(hidden)
    w.add_block_count(config["num_hidden_layers"])
    w.add_feed_forward_length(config["intermediate_size"])
    w.add_head_count(heads)
    w.add_head_count_kv(config["num_key_value_heads"])
    w.add_layer_norm_rms_eps(config["rms_norm_eps"])
    if arch != "gemma2":
        w.add_rope_freq_base(rope_theta(config))
    else:
        # llama.cpp's Gemma2Model writes no rope.freq_base (it uses 10000)
        assert rope_theta(config) == 10000.0, rope_theta(config)
    if arch in ("llama", "phi3"):
        w.add_rope_dimension_count(head_dim)
    if arch == "llama":
        w.add_vocab_size(config["vocab_size"])
    if arch == "phi3":
        w.add_rope_scaling_orig_ctx_len(config.get("original_max_position_embeddings", 4096))
    if arch == "qwen3":
        w.add_key_length(head_dim)
        w.add_value_length(head_dim)
    if arch == "gemma2":
        w.add_key_length(head_dim)
        w.add_value_length(head_dim)
        w.add_float32(gguf.Keys.LLM.ATTN_LOGIT_SOFTCAPPING.format(arch=arch), config["attn_logit_softcapping"])
        w.add_float32(gguf.Keys.LLM.FINAL_LOGIT_SOFTCAPPING.format(arch=arch), config["final_logit_softcapping"])
        w.add_sliding_window(config["sliding_window"])
    w.add_tokenizer_model(vocab["model"])
    if vocab["model"] == "gpt2":
        w.add_tokenizer_pre("default")
    w.add_token_list(vocab["tokens"])
    if "scores" in vocab:
        w.add_token_scores(vocab["scores"])
    w.add_token_types(vocab["types"])
    if vocab.get("merges"):
        w.add_token_merges(vocab["merges"])
    for key, fn in [("bos", w.add_bos_token_id), ("eos", w.add_eos_token_id), ("unk", w.add_unk_token_id),
                    ("pad", w.add_pad_token_id)]:
        if vocab.get(key) is not None:
            fn(vocab[key])
    w.add_add_bos_token(vocab["add_bos"])
    w.add_add_eos_token(False)
    qt = getattr(gguf.GGMLQuantizationType, qtype)
    for name, t in tensors.items():
        if t.ndim == 1 or qtype == "F32":
            w.add_tensor(name, t.astype(np.float32))
        elif qtype == "F16":
            w.add_tensor(name, t.astype(np.float16))
        elif t.shape[-1] % gguf.GGML_QUANT_SIZES[qt][0] != 0:
            w.add_tensor(name, t.astype(np.float32))  # rows not whole blocks (ffn_down: 48)
        else:
            q = quantize(t, qt)
            w.add_tensor(name, q, raw_shape=q.shape, raw_dtype=qt)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def spm_vocab() -> dict:
    """A llama-style sentencepiece vocab of 352: <unk> <s> </s>, 256 byte tokens, 93 pieces
    (from a tiny SentencePieceBPETokenizer, scores = -rank)."""
    from tokenizers import SentencePieceBPETokenizer

    corpus = [s.lower() for s in common.decoder_corpus()] * 4
    sp = SentencePieceBPETokenizer()
    sp.train_from_iterator(corpus, vocab_size=400, min_frequency=2, special_tokens=[], show_progress=False)
    pieces = [t for t, _ in sorted(sp.get_vocab().items(), key=lambda kv: kv[1])]
    pieces = [p for p in pieces if not (p.startswith("<") and p.endswith(">"))][: 352 - 259]
    assert len(pieces) == 93, len(pieces)
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)] + pieces
    scores = [0.0] * 259 + [-float(i) for i in range(len(pieces))]
    types = [2, 3, 3] + [6] * 256 + [1] * len(pieces)
    return {"model": "llama", "tokens": tokens, "scores": scores, "types": types,
            "bos": 1, "eos": 2, "unk": 0, "pad": None, "add_bos": True}


def gguf_metadata(path: Path) -> dict:
    from gguf import GGUFReader
    from transformers.integrations.ggml import _gguf_parse_value

    reader = GGUFReader(str(path))
    out = {}
    for key, field in reader.fields.items():
        value = [_gguf_parse_value(field.parts[i], field.types) for i in field.data]
        out[key] = value[0] if len(value) == 1 else value
    return out


def config_fixes(arch: str, meta: dict) -> dict:
    """Config values the file states (as llama.cpp reads it) that transformers 5.25's GGUF config
    builder does not map (GGUF_CONFIG_MAPPING), so the config class default would apply instead."""
    fixes = {}
    if arch == "qwen3":
        # 5.25 maps attention.key_length -> head_dim for qwen3_moe only; Qwen3Config's default is 128
        fixes["head_dim"] = meta["qwen3.attention.key_length"]
    if arch == "gemma2":
        # not mapped at all: Gemma2Config defaults 50.0 / 30.0 would apply
        fixes["attn_logit_softcapping"] = meta["gemma2.attn_logit_softcapping"]
        fixes["final_logit_softcapping"] = meta["gemma2.final_logit_softcapping"]
        # no GGUF key: llama.cpp scales gemma2 queries by 1/sqrt(key_length) (1/sqrt(hidden/heads) for the
        # 46-layer 27B); Gemma2Config's default 256 would apply
        fixes["query_pre_attn_scalar"] = meta["gemma2.attention.key_length"]
    return fixes


def from_gguf(path: Path, arch: str):
    """transformers' own GGUF loading; returns (model, tie_word_embeddings as loaded, config_overrides)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    folder, name = str(path.parent), path.name
    config = AutoConfig.from_pretrained(folder, gguf_file=name)
    tie_as_loaded = config.tie_word_embeddings
    overrides = {}
    for key, value in config_fixes(arch, gguf_metadata(path)).items():
        before = getattr(config, key)
        if before != value:
            overrides[key] = {"as_loaded": before, "used": value}
            setattr(config, key, value)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, config=config,
                                                 attn_implementation="eager", dtype=torch.float32)
    assert model.dtype == torch.float32, model.dtype
    assert model.config.tie_word_embeddings == tie_as_loaded
    tied_params = model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    assert tied_params == tie_as_loaded, (path.name, tied_params, tie_as_loaded)
    return model.eval(), tie_as_loaded, overrides


@torch.no_grad()
def record(model) -> dict:
    cases = []
    for prompt in PROMPTS:
        ids = torch.tensor([prompt])
        logits = model(ids).logits[0, -1]
        seq = list(prompt)
        for _ in range(GREEDY_NEW):
            nxt = int(model(torch.tensor([seq])).logits[0, -1].argmax())
            seq.append(nxt)
        cases.append({"input_ids": prompt, "last_logits": logits.tolist(), "greedy_ids": seq})
    return {"cases": cases}


def tokenizer_cases(path: Path) -> dict:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    texts = common.dedupe(
        [
            "", " ", "  ", "hello", "Hello world", "hello world", " hello", "hello ", "the cat sat on the mat.",
            "The quick brown fox jumps over the lazy dog.", "a  b   c", "tabs\tand\nnewlines\n", "ünïcödé",
            "日本語のテキスト", "emoji 🤗 here", "café au lait", "x" * 30, "1234567890", "3.14159",
            "don't stop", "what's up?", "hello , world .", "Mr. Smith's car", "a-b_c/d\\e", "<s>", "</s>",
            "<unk>", "text <s> with </s> specials", "▁already▁spaced", "<0x41>", "@#$%^&*()", "   leading",
            "trailing   ", "MiXeD CaSe", "the the the the", "supercalifragilisticexpialidocious",
            "new\n\nparagraph", "ÀÉÎÕÜ", "Ελληνικά", "русский текст", "中文", "a\u00a0b", "zero\u200bwidth",
            "end.", "(parens) [brackets] {braces}", "quote \"this\"", "it is what it is",
            "on the other hand", "in the beginning", "and then there were none",
        ]
        + [s for s in common.decoder_corpus()[:6]]
    )
    cases = []
    for t in texts:
        ids = tok.encode(t, add_special_tokens=False)
        with_special = tok.encode(t)
        cases.append({
            "text": t,
            "ids": ids,
            "ids_with_special": with_special,
            "decoded": tok.decode(ids),
            "decoded_with_special": tok.decode(with_special),
            "decoded_skip_special": tok.decode(with_special, skip_special_tokens=True),
        })
    return {
        "class": type(tok).__name__,
        "bos_token": tok.bos_token,
        "eos_token": tok.eos_token,
        "unk_token": tok.unk_token,
        "clean_up_tokenization_spaces": tok.clean_up_tokenization_spaces,
        "cases": cases,
    }


NOTES = [
    "Reference: transformers 5.25.0, AutoConfig / AutoModelForCausalLM.from_pretrained(dir, gguf_file=name, "
    "config=config, attn_implementation='eager', dtype=float32). For llama, qwen2, qwen3, gemma2 and phi3 5.25 "
    "takes its legacy GGUF path (modeling_gguf_pytorch_utils.load_gguf_checkpoint: gguf-py dequantizes every "
    "tensor to float32, llama attn_q / attn_k un-permuted, gemma2 norms -1); its new packed-weight loader "
    "(integrations/gguf, GgufHfQuantizer) covers only qwen35, qwen35moe and lfm2. config.quantization_config "
    "is still set ({quant_method: gguf, dequantize: false}) although nothing stays packed.",
    "tie_word_embeddings: 5.25 sets it from the file (true when there is no output.weight), so tied files load "
    "with lm_head = token_embd as they are (4.46.3 built every GGUF config with false and left lm_head random; "
    "the 4.46.3 recording forced the tie on). config_tie_word_embeddings_as_loaded is now true for qwen2, qwen3, "
    "gemma2.",
    "rope.freq_base is written from config.json rope_parameters.rope_theta (500000 for tiny-llama and its "
    "quantized / spm copies, 1000000 for tiny-qwen2 and tiny-qwen3, 10000 for phi3; gemma2 writes none, as "
    "llama.cpp, and is 10000). 5.25 maps it to rope_theta, which the config stores as "
    "rope_parameters {rope_type: default, rope_theta}.",
    "5.25 loads gemma2 and qwen3 GGUF files (4.46.3 loaded neither, 4.51.3 no qwen3), but its config builder "
    "(GGUF_CONFIG_MAPPING) reads fewer keys than llama.cpp. gemma2: attn_logit_softcapping / "
    "final_logit_softcapping are not mapped (Gemma2Config defaults 50 / 30 instead of the file's 5 / 4) and "
    "GGUF has no query_pre_attn_scalar (default 256; llama.cpp scales queries by 1/sqrt(key_length), "
    "1/sqrt(hidden/heads) for the 46-layer 27B). qwen3: attention.key_length is mapped to head_dim for "
    "qwen3_moe only, so Qwen3Config's default head_dim 128 applies and the tiny file (head_dim 16) fails to "
    "load (size mismatch). These config values are set from the file before loading the weights; "
    "config_overrides lists them ({key: {as_loaded, used}}). The tiny fixture's query_pre_attn_scalar 24 is "
    "not representable in GGUF: the gemma2 entry uses key_length (16), as llama.cpp.",
    "Quantized copies: only matrices whose rows are whole 32-blocks are quantized (ffn_down has "
    "48 columns and stays F32); gguf-py 0.19 quantizes no K-quant but Q6_K, and K-quants need "
    "256-element rows, which these tiny models (hidden 32) do not have.",
    "spm tokenizer (5.25 integrations/gguf/gguf_tokenizer_mapping.py): built as LlamaTokenizer over "
    "tokenizer.ggml.tokens, BPE merges derived from the scores (no tokenizer.ggml.merges, as llama.cpp writes "
    "none for sentencepiece vocabs), byte_fallback; pre_tokenizer Metaspace(replace '\u2581', prepend_scheme "
    "'first', split false), no normalizer; decoder Replace('\u2581', ' '), ByteFallback, Fuse, Strip(1 leading "
    "space); bos / eos / unk = tokens[tokenizer.ggml.{bos,eos,unknown}_token_id] (4.46.3 swapped bos and eos: "
    "eos_token was '<s>'); add_bos_token from tokenizer.ggml.add_bos_token (true here; default true for "
    "sentencepiece files without it). The AutoTokenizer class is TokenizersBackend.",
    "spm tokenizer changes from 4.46.3 (whose GGUFLlamaConverter used a normalizer Prepend('\u2581') + "
    "Replace(' ', '\u2581'), like llama.cpp's add_space_prefix): Metaspace with prepend_scheme 'first' adds "
    "no '\u2581' to text that already starts with a space or '\u2581' (' hello' is [\u2581hello], was "
    "[\u2581, \u2581hello]) and none to the text after a special token ('<s> with' no longer gets an extra "
    "'\u2581'); decode strips one leading space of the first token.",
]


def families_entries(families: list[str]) -> dict:
    files = {}
    for family in families:
        folder, config, tensors = load_hf(family)
        tied = "lm_head.weight" not in tensors or config.get("tie_word_embeddings", family == "gemma2")
        tokens, types, merges = gpt2_vocab(folder)
        vocab = {"model": "gpt2", "tokens": tokens, "types": types, "merges": merges,
                 "bos": config.get("bos_token_id"), "eos": config.get("eos_token_id"),
                 "pad": config.get("pad_token_id"), "add_bos": False}
        gt = gguf_tensors(family, config, tensors)
        variants = [("F32", f"tiny-{family}.gguf")]
        if family == "llama":
            variants += [(q, f"tiny-llama-{q.lower()}.gguf") for q in QUANTS]
        for qtype, name in variants:
            path = OUT / name
            write_gguf(path, family, config, gt, qtype, vocab)
            model, tie_as_loaded, overrides = from_gguf(path, family)
            assert tie_as_loaded == bool(tied), (name, tie_as_loaded, tied)
            entry = {"arch": family, "tensor_type": qtype, "tied": bool(tied),
                     "reference": "from_pretrained(dir, gguf_file=name)",
                     "config_tie_word_embeddings_as_loaded": tie_as_loaded}
            if overrides:
                entry["config_overrides"] = overrides
            if family == "gemma2":
                entry["query_pre_attn_scalar"] = model.config.query_pre_attn_scalar
            entry.update(record(model))
            files[name] = entry
        if family == "llama":
            path = OUT / "tiny-llama-spm.gguf"
            write_gguf(path, "llama", config, gt, "F16", spm_vocab())
            model, tie_as_loaded, overrides = from_gguf(path, "llama")
            assert not tie_as_loaded and not overrides
            entry = {"arch": "llama", "tensor_type": "F16", "tied": False,
                     "reference": "from_pretrained(dir, gguf_file=name)",
                     "config_tie_word_embeddings_as_loaded": tie_as_loaded}
            entry.update(record(model))
            entry["tokenizer"] = tokenizer_cases(path)
            files["tiny-llama-spm.gguf"] = entry
    return files


def main(only_qwen3: bool) -> None:
    common.setup()
    import transformers

    if tuple(int(x) for x in transformers.__version__.split(".")[:2]) < (5, 0):
        sys.exit(f"make_gguf.py records with transformers 5.x (pinned 5.25.0, tools/golden/requirements.txt); "
                 f"this is {transformers.__version__}")
    transformers.utils.logging.disable_progress_bar()
    import huggingface_hub

    OUT.mkdir(parents=True, exist_ok=True)
    expected_path = OUT / "expected.json"
    if only_qwen3:
        # rebuild tiny-qwen3.gguf and its entry; every other file and entry stays as it is
        files = json.loads(expected_path.read_text())["files"]
        files.update(families_entries(["qwen3"]))
    else:
        files = families_entries(FAMILIES)
    out = {
        "meta": common.meta(SCRIPT, huggingface_hub=huggingface_hub.__version__,
                            gguf=importlib.metadata.version("gguf"),
                            accelerate=importlib.metadata.version("accelerate"), notes=NOTES),
        "files": files,
    }
    common.write_json(expected_path, out)
    total = sum(p.stat().st_size for p in OUT.iterdir())
    print(f"wrote {OUT} ({total} bytes)")


if __name__ == "__main__":
    if sys.argv[1:] not in ([], ["--qwen3"]):
        sys.exit(__doc__)
    main(only_qwen3=sys.argv[1:] == ["--qwen3"])
