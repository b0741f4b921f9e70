"""Tiny GGUF files from the tiny HF decoder fixtures, and what transformers makes of them.

Writes tests/fixtures/gguf/
    tiny-{llama,qwen2,qwen3,gemma2,phi3}.gguf  f32 tensors (lossless copies of the HF fixtures)
    tiny-llama-{q8_0,q4_0,q4_1,q5_0,q5_1}.gguf  tiny-llama in block formats (gguf-py quantizes)
    tiny-llama-spm.gguf                      tiny-llama, f16 matrices, sentencepiece-style
                                             tokenizer (tokenizer.ggml.model = "llama")
    tiny-llama-rope-{llama3,yarn}.gguf       f32 copies of tiny-llama-rope-{llama3,yarn} with their
                                             RoPE scaling as llama.cpp's converter writes it (llama3:
                                             a rope_freqs.weight tensor; yarn: rope.scaling.* keys);
                                             no expected.json entry (transformers' GGUF loader reads
                                             neither), the reference is the HF fixture's own logits
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
rope_theta); rope_type "default" only, except in the --rope files (see rope_scaling()).

The reference is transformers 5.25.0's own GGUF loading, `from_pretrained(dir, gguf_file=name)`
(its legacy loader for these architectures: gguf-py dequantizes every tensor to float32).
It builds the config from the file, but reads fewer keys than llama.cpp: where a file states
something 5.25 ignores (gemma2's soft-capping and query scale, qwen3's head size) the config
it built is corrected before the weights are loaded, and the entry's `config_overrides` says
what 5.25 had and what was used (see meta.notes).

Usage:  python tools/golden/make_gguf.py           # every file and expected.json
        python tools/golden/make_gguf.py --qwen3   # tiny-qwen3.gguf and its expected.json entry only
        python tools/golden/make_gguf.py --rope    # tiny-llama-rope-{llama3,yarn}.gguf only (checked
                                                   # against the HF fixtures' logits; expected.json untouched)
"""

from __future__ import annotations

import importlib.metadata
import json
import math
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


def rope_theta(config: dict, scaled: bool = False) -> float:
    """The RoPE base of a 5.x config.json: `rope_parameters.rope_theta` (no top-level rope_theta)."""
    rope = config.get("rope_parameters")
    if not isinstance(rope, dict) or "rope_theta" not in rope:
        sys.exit(f"{config.get('model_type')}: config.json has no rope_parameters.rope_theta; "
                 "rebuild the tiny decoders with make_decoders.py (transformers 5.x) first")
    if not scaled:
        assert rope.get("rope_type", "default") == "default", rope  # scaling only via rope_scaling()
    return float(rope["rope_theta"])


def llama3_rope_factors(config: dict) -> np.ndarray:
    """rope_freqs.weight as llama.cpp's convert_hf_to_gguf.py LlamaModel.generate_extra_tensors computes
    it (same float32 torch arithmetic): one divisor per rotary pair, llama.cpp rotates pair i by
    pos * base^(-2i/d) / rope_freqs[i]. The converter takes `original_max_position_embeddings` from the
    top level of the config (`self.hparams.get(..., 8192)`), where HF configs never have it, so it always
    uses 8192 (right for every Llama 3.x checkpoint, whose value that is); here it is read from
    rope_parameters, as HF's _compute_llama3_parameters does (the tiny fixture's 128)."""
    rope = config["rope_parameters"]
    base = rope.get("rope_theta", 10000.0)
    dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    freqs = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))

    factor = rope.get("factor", 8.0)
    low_freq_factor = rope.get("low_freq_factor", 1.0)
    high_freq_factor = rope.get("high_freq_factor", 4.0)
    old_context_len = rope["original_max_position_embeddings"]  # converter: hparams.get(..., 8192)

    low_freq_wavelen = old_context_len / low_freq_factor
    high_freq_wavelen = old_context_len / high_freq_factor
    assert low_freq_wavelen != high_freq_wavelen

    rope_factors = []
    for freq in freqs:
        wavelen = 2 * math.pi / freq
        if wavelen < high_freq_wavelen:
            rope_factors.append(1)
        elif wavelen > low_freq_wavelen:
            rope_factors.append(factor)
        else:
            smooth = (old_context_len / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
            rope_factors.append(1 / ((1 - smooth) / factor + smooth))
    return torch.tensor(rope_factors, dtype=torch.float32).numpy()


def rope_scaling(config: dict) -> tuple[list, dict[str, np.ndarray]]:
    """What llama.cpp's converter writes for the config's rope_parameters (TextModel.set_gguf_parameters,
    LlamaModel.generate_extra_tensors): [(GGUFWriter method name, value)] and extra tensors."""
    rope = config["rope_parameters"]
    kind = rope.get("rope_type", "default")
    if kind == "llama3":  # no rope.scaling.* key: the divisors are a tensor
        return [], {"rope_freqs.weight": llama3_rope_factors(config)}
    if kind == "linear":
        return [("add_rope_scaling_type", "LINEAR"), ("add_rope_scaling_factor", rope["factor"])], {}
    if kind == "yarn":
        kv = [("add_rope_scaling_type", "YARN"), ("add_rope_scaling_factor", rope["factor"]),
              ("add_rope_scaling_orig_ctx_len", rope["original_max_position_embeddings"])]
        optional = [("add_rope_scaling_yarn_ext_factor", rope.get("extrapolation_factor")),
                    ("add_rope_scaling_yarn_attn_factor", rope.get("attention_factor", rope.get("attn_factor"))),
                    ("add_rope_scaling_yarn_beta_fast", rope.get("beta_fast")),
                    ("add_rope_scaling_yarn_beta_slow", rope.get("beta_slow"))]
        return kv + [(method, value) for method, value in optional if value is not None], {}
    raise ValueError(f"rope_type {kind!r} is not written here")


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


def write_gguf(path: Path, arch: str, config: dict, tensors: dict, qtype: str, vocab: dict,
               rope_kv: list | None = None) -> None:
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
        w.add_rope_freq_base(rope_theta(config, scaled=rope_kv is not None))
    else:
        # llama.cpp's Gemma2Model writes no rope.freq_base (it uses 10000)
        assert rope_theta(config) == 10000.0, rope_theta(config)
    for method, value in rope_kv or []:  # rope.scaling.* (the --rope files)
        getattr(w, method)(getattr(gguf.RopeScalingType, value) if method == "add_rope_scaling_type" else value)
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


ROPE_FIXTURES = ["tiny-llama-rope-llama3", "tiny-llama-rope-yarn"]


def llamacpp_logits(path: Path, ids: list[int], positions: list[int]) -> np.ndarray:
    """Logits of a llama-arch GGUF file for one unpadded sequence, computed in float64 the way llama.cpp
    does: the file's tensors as stored (q/k rows permuted, so RoPE rotates adjacent pairs, ggml's
    normal mode) and its RoPE as ggml_rope_ext applies it (rope_freqs divisors, YaRN ramp over
    ggml_rope_yarn_corr_dims, mscale 1 + 0.1 ln(factor)) from the file's rope.* keys."""
    from gguf import GGUFReader

    reader = GGUFReader(str(path))
    meta = gguf_metadata(path)
    t = {x.name: np.asarray(x.data, dtype=np.float64) for x in reader.tensors}
    a = meta["general.architecture"]
    n_layer, n_head = meta[f"{a}.block_count"], meta[f"{a}.attention.head_count"]
    n_kv, eps = meta[f"{a}.attention.head_count_kv"], meta[f"{a}.attention.layer_norm_rms_epsilon"]
    n_rot, base = meta[f"{a}.rope.dimension_count"], meta[f"{a}.rope.freq_base"]
    kind = meta.get(f"{a}.rope.scaling.type", "linear")  # llama.cpp's default when absent
    factor = meta.get(f"{a}.rope.scaling.factor", 0.0)
    freq_scale = 1.0 if factor == 0.0 or kind == "none" else 1.0 / factor
    n_ctx_orig = meta.get(f"{a}.rope.scaling.original_context_length", meta[f"{a}.context_length"])
    ext_factor = 1.0 if kind == "yarn" else 0.0
    beta_fast, beta_slow = 32.0, 1.0  # llama_hparams defaults (llama arch reads no yarn_beta_* key)
    ff = t.get("rope_freqs.weight", np.ones(n_rot // 2))

    def corr_dim(n_rotations: float) -> float:
        return n_rot * math.log(n_ctx_orig / (n_rotations * 2 * math.pi)) / (2 * math.log(base))

    low = max(0.0, math.floor(corr_dim(beta_fast)))
    high = min(n_rot - 1.0, math.ceil(corr_dim(beta_slow)))
    i = np.arange(n_rot // 2)
    ramp = (1 - np.clip((i - low) / max(0.001, high - low), 0, 1)) * ext_factor
    mscale = 1 + 0.1 * math.log(1 / freq_scale) if ext_factor != 0 else 1.0
    theta_extrap = np.asarray(positions, dtype=np.float64)[:, None] * base ** (-2.0 * i / n_rot) / ff
    theta = freq_scale * theta_extrap * (1 - ramp) + theta_extrap * ramp
    cos, sin = np.cos(theta) * mscale, np.sin(theta) * mscale  # [T, n_rot/2]

    def rope(x: np.ndarray) -> np.ndarray:  # [T, heads, head_dim], adjacent pairs
        x0, x1 = x[..., 0:n_rot:2], x[..., 1:n_rot:2]
        out = x.copy()
        out[..., 0:n_rot:2] = x0 * cos[:, None] - x1 * sin[:, None]
        out[..., 1:n_rot:2] = x0 * sin[:, None] + x1 * cos[:, None]
        return out

    def norm(x: np.ndarray, w: np.ndarray) -> np.ndarray:
        return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * w

    h = t["token_embd.weight"][ids]
    n = len(ids)
    mask = np.triu(np.full((n, n), -np.inf), 1)
    for layer in range(n_layer):
        w = {k.split(".", 2)[2]: v for k, v in t.items() if k.startswith(f"blk.{layer}.")}
        x = norm(h, w["attn_norm.weight"])
        q = rope((x @ w["attn_q.weight"].T).reshape(n, n_head, -1))
        k = rope((x @ w["attn_k.weight"].T).reshape(n, n_kv, -1))
        v = (x @ w["attn_v.weight"].T).reshape(n, n_kv, -1)
        k, v = np.repeat(k, n_head // n_kv, axis=1), np.repeat(v, n_head // n_kv, axis=1)
        scores = np.einsum("qhd,khd->hqk", q, k) / math.sqrt(q.shape[-1]) + mask
        p = np.exp(scores - scores.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        h = h + np.einsum("hqk,khd->qhd", p, v).reshape(n, -1) @ w["attn_output.weight"].T
        x = norm(h, w["ffn_norm.weight"])
        g = x @ w["ffn_gate.weight"].T
        h = h + (g / (1 + np.exp(-g)) * (x @ w["ffn_up.weight"].T)) @ w["ffn_down.weight"].T
    h = norm(h, t["output_norm.weight"])
    return h @ t.get("output.weight", t["token_embd.weight"]).T


def check_against_hf(path: Path, folder: Path) -> float:
    """Largest |difference| between llamacpp_logits() of the file and the HF fixture's recorded logits
    (expected.json `logits`: every 16th vocab entry and the logsumexp at each real position)."""
    rec = json.loads((folder / "expected.json").read_text())["logits"]
    stride, worst = rec["logits_stride"], 0.0
    for b, (ids, mask, pos) in enumerate(zip(rec["input_ids"], rec["attention_mask"], rec["position_ids"])):
        real = [t for t, m in enumerate(mask) if m]
        logits = llamacpp_logits(path, [ids[t] for t in real], [pos[t] for t in real])
        for row, t in zip(logits, real):
            worst = max(worst, float(np.abs(row[::stride] - np.asarray(rec["logits_strided"][b][t])).max()))
            lse = row.max() + math.log(np.exp(row - row.max()).sum())
            worst = max(worst, abs(lse - rec["logits_logsumexp"][b][t]))
    return worst


def rope_files() -> None:
    """tiny-llama-rope-{llama3,yarn}.gguf: written like tiny-llama.gguf (F32, q/k permuted, gpt2 vocab)
    plus the RoPE scaling as llama.cpp's converter encodes it; no expected.json entry."""
    from safetensors.numpy import load_file

    for fixture in ROPE_FIXTURES:
        folder = FIXTURES / fixture
        config = json.loads((folder / "config.json").read_text())
        tensors = load_file(str(folder / "model.safetensors"))
        tokens, types, merges = gpt2_vocab(folder)
        vocab = {"model": "gpt2", "tokens": tokens, "types": types, "merges": merges,
                 "bos": config.get("bos_token_id"), "eos": config.get("eos_token_id"),
                 "pad": config.get("pad_token_id"), "add_bos": False}
        rope_kv, extra = rope_scaling(config)
        # the converter yields generate_extra_tensors() before the checkpoint's tensors
        gt = {**extra, **gguf_tensors("llama", config, tensors)}
        path = OUT / f"{fixture}.gguf"
        write_gguf(path, "llama", config, gt, "F32", vocab, rope_kv=rope_kv)
        worst = check_against_hf(path, folder)
        print(f"{path.name}: rope {rope_kv or list(extra)}; llama.cpp-style logits vs "
              f"{fixture}/expected.json: max |diff| {worst:.3g}")
        assert worst <= 1e-4, (path.name, worst)


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
        rope_files()
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
    if sys.argv[1:] not in ([], ["--qwen3"], ["--rope"]):
        sys.exit(__doc__)
    if sys.argv[1:] == ["--rope"]:
        common.setup()
        OUT.mkdir(parents=True, exist_ok=True)
        rope_files()
    else:
        main(only_qwen3=sys.argv[1:] == ["--qwen3"])
