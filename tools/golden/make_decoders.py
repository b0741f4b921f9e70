"""Build tiny random decoder (causal-LM) checkpoints and record golden outputs.

For every folder tests/fixtures/tiny-<family>[-variant]/ this writes
    config.json, generation_config.json, model.safetensors (save_pretrained),
    tokenizer.json, tokenizer_config.json, chat_template.jinja (the ChatML
    template: 5.x saves it beside tokenizer_config.json, and writes no
    special_tokens_map.json), expected.json.
and tests/fixtures/logits-processors.json (generation logits processors applied
to a fixed score matrix).

The folder is re-loaded with from_pretrained before anything is recorded, and a
fresh model is loaded for every recorded call (dynamic RoPE keeps state between
calls, see the notes in expected.json).

Reference stack: transformers 5.25.0 (tools/golden/requirements.txt). The configs
are written the 5.x way (`rope_parameters` with `rope_type` and `rope_theta`, no
top-level `rope_theta` / `rope_scaling`); the script refuses to run under 4.x.

Usage:  python tools/golden/make_decoders.py [--only tiny-llama,tiny-gpt2,logits-processors]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from common import (  # noqa: E402
    DECODER_BOS,
    DECODER_CHAT,
    DECODER_CLS_TEXTS,
    DECODER_EOS,
    DECODER_IM_END,
    DECODER_PAD,
    DECODER_PROMPTS,
    FIXTURES,
)

SCRIPT = "make_decoders.py"

VOCAB_SIZE = 352
# As in make_encoders: larger than the usual 0.02 so attention is far from
# uniform and greedy continuations are not one repeated token.
INIT_RANGE = 0.2
# Every model is run with eager attention: it is the plain reference maths
# (Gemma2 forces it anyway; sdpa differs only at fully masked pad rows).
ATTN_IMPLEMENTATION = "eager"

# Logits of the padded batch are [2, T, V]; record every LOGITS_STRIDE-th vocab
# column, the full-vocab logsumexp / argmax per position, and the full last position.
LOGITS_STRIDE = 16

GREEDY_NEW_TOKENS = 12
BEAM_KWARGS = dict(
    num_beams=3,
    num_return_sequences=2,
    length_penalty=1.0,
    early_stopping=True,
    max_new_tokens=8,
    do_sample=False,
)

NUM_LABELS = 3
CLS_LABELS = {0: "NEGATIVE", 1: "NEUTRAL", 2: "POSITIVE"}

# Appended to meta.notes of every causal-LM fixture (what changed from the 4.46.3 recordings).
CAUSAL_NOTES = [
    "transformers 5.x: generate's position_ids (and logits.position_ids here) are cumsum(attention_mask) - 1 with "
    "pads set to 0 (4.46.3 set them to 1); pads are masked, so no recorded value depends on it.",
    "beam search (5.x): rows are filled past their end with `pad_token_id or eos_token_id[0]` evaluated on tensors, "
    "so with pad_token_id 0 (falsy) a finished hypothesis is followed by copies of the first eos id, not by <pad> "
    "(4.46.3 used pad_token_id); greedy rows are still filled with pad_token_id.",
    "beam search (5.x): sequences_scores = sum of the processed log_softmax of the new tokens / (number of new "
    "tokens, eos included) ** length_penalty, as in 4.46.3. At the step that reaches max_new_tokens, 5.x treats "
    "the top num_beams candidates of that step (eos or not: all hit the length limit) as finished and keeps the "
    "best num_beams of them and the earlier finished hypotheses by score; 4.46.3 (early_stopping=True) first let "
    "that step's eos candidates fill the num_beams finished slots and then ignored the still-running beams, so "
    "where both exist 5.x may return a length-limited beam that outscores an eos hypothesis 4.46.3 returned.",
]


# ---------------------------------------------------------------------------
# Checkpoint specifications
# ---------------------------------------------------------------------------

@dataclass
class Spec:
    name: str
    config_class: str
    model_class: str
    config: dict
    kind: str = "causal"  # "causal" | "seqcls"
    add_bos: bool = True  # tokenizer prepends <s>
    min_transformers: str = "5.0.0"
    generation_overrides: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)
    # Per-layer parameter-name suffixes, in the order transformers 4.46.3 registered them where 5.x differs,
    # so that common.perturb_decoder draws the same random values (the weights stay those of the 4.46 fixtures).
    legacy_layer_order: list = field(default_factory=list)


def rope(rope_type: str = "default", theta: float = 10000.0, **params) -> dict:
    """A 5.x `rope_parameters` dict: rope_type and rope_theta, then the type's own keys."""
    return {"rope_type": rope_type, "rope_theta": theta, **params}


def llama_like(**kw) -> dict:
    """Shared sizes: hidden 32, 2 layers, 4 heads / 2 KV heads (GQA), head_dim 8."""
    cfg = dict(
        vocab_size=VOCAB_SIZE,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        rms_norm_eps=1e-6,
        rope_parameters=rope(),
        initializer_range=INIT_RANGE,
        bos_token_id=DECODER_BOS,
        eos_token_id=DECODER_EOS,
        pad_token_id=DECODER_PAD,
        tie_word_embeddings=False,
    )
    cfg.update(kw)
    return cfg


# meta.notes shared by the seq-cls folders whose head is 5.25's GenericForSequenceClassification.
SEQCLS_GENERIC_NOTES = [
    "5.25: <Family>ForSequenceClassification is GenericForSequenceClassification (modeling_layers.py): the base "
    "model (keys model.*) then `score` = Linear(hidden_size, num_labels, bias=False) over every position, then the "
    "row's rightmost token that is not config.pad_token_id is picked: argmax(arange(T) * (input_ids != pad)); with "
    "right padding, the token before the first pad. No lm_head, no cast (logits float32, the checkpoint's dtype).",
]

DYNAMIC_MAX_POS = 16  # < len(prompt 0) so the batch forward rescales, > len(prompt 1)

# tiny-phi3-longrope: head_dim 8, so 4 factors each (rotary_dim / 2), all distinct.
LONGROPE_ORIGINAL_MAX_POS = 16  # < len(prompt 0) (26); prompt 1 (8 tokens) crosses it while generating
LONGROPE_SHORT_FACTOR = [1.0, 1.3, 1.9, 2.7]
LONGROPE_LONG_FACTOR = [1.2, 1.8, 2.9, 3.9]

SPECS = [
    Spec(
        "tiny-llama", "LlamaConfig", "LlamaForCausalLM",
        llama_like(rope_parameters=rope(theta=500000.0)),
        notes=["rope_parameters = {rope_type: default, rope_theta: 500000.0} (Llama-3 base): inv_freq = "
               "500000 ** (-2i / 8)"],
    ),
    Spec(
        "tiny-llama-rope-linear", "LlamaConfig", "LlamaForCausalLM",
        llama_like(tie_word_embeddings=True, rope_parameters=rope("linear", factor=2.0)),
    ),
    Spec(
        "tiny-llama-rope-dynamic", "LlamaConfig", "LlamaForCausalLM",
        llama_like(
            tie_word_embeddings=True,
            max_position_embeddings=DYNAMIC_MAX_POS,
            rope_parameters=rope("dynamic", factor=2.0),
        ),
        notes=[
            "dynamic NTK: every forward recomputes inv_freq from seq_len = max(position_ids) + 1 over the whole batch "
            "when it exceeds the largest seq_len seen so far (max_seq_len_cached, initially max_position_embeddings); "
            "keys already in the KV cache keep the rotation they were given. It resets to the original inv_freq when "
            "seq_len < max_position_embeddings. This state lives on the model between generate calls, so every "
            "recorded case uses a freshly loaded model.",
            "base' = rope_theta * ((factor * seq_len / max_position_embeddings) - (factor - 1)) ** (dim / (dim - 2))",
            "so the padded batch and a single prompt rotate with different frequencies: batch != singles here.",
        ],
    ),
    Spec(
        "tiny-llama-rope-llama3", "LlamaConfig", "LlamaForCausalLM",
        llama_like(
            tie_word_embeddings=True,
            max_position_embeddings=128,
            rope_parameters=rope(
                "llama3",
                factor=8.0,
                low_freq_factor=1.0,
                high_freq_factor=4.0,
                original_max_position_embeddings=128,
            ),
        ),
        notes=["head_dim 8: wavelengths 6.3 (kept), 62.8 (smoothed), 628 and 6283 (divided by factor)"],
    ),
    Spec(
        "tiny-llama-rope-yarn", "LlamaConfig", "LlamaForCausalLM",
        llama_like(
            tie_word_embeddings=True,
            max_position_embeddings=128,
            rope_parameters=rope("yarn", factor=4.0, original_max_position_embeddings=32),
        ),
        notes=[
            "transformers 5.x finds yarn's correction range with rope_parameters.original_max_position_embeddings "
            "(32), not max_position_embeddings (128): low = floor(dim * ln(32 / (beta_fast * 2 pi)) / (2 ln base)), "
            "high = ceil(dim * ln(32 / (beta_slow * 2 pi)) / (2 ln base)), clamped to [0, dim - 1], with beta_fast 32, "
            "beta_slow 1 and rope_parameters.truncate (absent here, default true: floor/ceil applied; false keeps "
            "the raw bounds, which here gives the same inv_freq). Here low = 0, high = 1: inv_freq = [1, 0.1 / 4, "
            "0.01 / 4, 0.001 / 4]. 4.46.3 ignored original_max_position_embeddings (it warned about an unrecognised "
            "key) and used max_position_embeddings (128): high = 2, inv_freq[1] = 0.0625 instead of 0.025, so the "
            "logits and generations differ from the 4.46.3 fixture.",
            "attention_factor = 0.1 * ln(factor) + 1 multiplies cos and sin (so q.k scales by its square).",
        ],
    ),
    Spec(
        "tiny-mistral", "MistralConfig", "MistralForCausalLM",
        llama_like(sliding_window=8),
        notes=["sliding_window 8: query i attends keys j with i - 8 < j <= i (cache index, pads included)"],
    ),
    Spec(
        "tiny-qwen2", "Qwen2Config", "Qwen2ForCausalLM",
        llama_like(tie_word_embeddings=True, use_sliding_window=False, rope_parameters=rope(theta=1000000.0)),
        generation_overrides={"eos_token_id": [DECODER_EOS, DECODER_IM_END]},
        notes=[
            "q/k/v projections have biases; generation_config.eos_token_id is a list [</s>, <|im_end|>]",
            "rope_parameters = {rope_type: default, rope_theta: 1000000.0}",
        ],
    ),
    Spec(
        "tiny-qwen3", "Qwen3Config", "Qwen3ForCausalLM",
        llama_like(
            tie_word_embeddings=True, head_dim=16, use_sliding_window=False, rope_parameters=rope(theta=1000000.0)
        ),
        notes=[
            "head_dim 16 != hidden/heads; q_norm/k_norm are per-head RMSNorms over head_dim before RoPE",
            "rope_parameters = {rope_type: default, rope_theta: 1000000.0}",
        ],
    ),
    Spec(
        "tiny-gemma2", "Gemma2Config", "Gemma2ForCausalLM",
        llama_like(
            tie_word_embeddings=True,
            head_dim=16,
            query_pre_attn_scalar=24,
            sliding_window=8,
            attn_logit_softcapping=5.0,
            final_logit_softcapping=4.0,
            hidden_activation="gelu_pytorch_tanh",
        ),
        legacy_layer_order=[
            "input_layernorm.weight",
            "pre_feedforward_layernorm.weight",
            "post_feedforward_layernorm.weight",
            "post_attention_layernorm.weight",
        ],
        notes=[
            "layer 0 (even layers) uses the sliding window 8, layer 1 global attention",
            "attention scale query_pre_attn_scalar ** -0.5 (24, not head_dim 16)",
            "soft-capping: cap * tanh(x / cap) on attention scores (5.0) and final logits (4.0)",
            "embeddings are multiplied by sqrt(hidden_size) (as a float32 tensor); RMSNorm gains are (1 + w)",
            "transformers 5.x generate uses a DynamicCache with a DynamicSlidingWindowLayer for layer 0 and a "
            "DynamicLayer for layer 1 (generation_config has no cache_implementation 'hybrid' any more). The "
            "4.46.3 HybridCache bug with left padding is gone: the padded batch (greedy and beam) equals its "
            "use_cache=False recomputation and the unpadded runs, so no case carries sequences_uncached; the "
            "batch sequences and scores equal the sequences_uncached / sequences_scores_uncached 4.46.3 recorded.",
            "the norm gains are drawn in 4.46.3's parameter order (input, pre_feedforward, post_feedforward, "
            "post_attention) so the weights are the 4.46.3 fixture's.",
        ],
    ),
    Spec(
        "tiny-phi3", "Phi3Config", "Phi3ForCausalLM",
        llama_like(sliding_window=None),
        notes=["fused self_attn.qkv_proj ([q; k; v] rows) and mlp.gate_up_proj ([gate; up] rows)"],
    ),
    Spec(
        "tiny-phi3-longrope", "Phi3Config", "Phi3ForCausalLM",
        llama_like(
            sliding_window=None,
            max_position_embeddings=64,
            # Phi-3 checkpoints carry it at the top level too, and 5.x copies the top-level value into
            # rope_parameters (it wins over the one given there), so both say 16.
            original_max_position_embeddings=LONGROPE_ORIGINAL_MAX_POS,
            rope_parameters=rope(
                "longrope",
                short_factor=list(LONGROPE_SHORT_FACTOR),
                long_factor=list(LONGROPE_LONG_FACTOR),
                original_max_position_embeddings=LONGROPE_ORIGINAL_MAX_POS,
            ),
        ),
        notes=[
            "rope_parameters: rope_type longrope, rope_theta 10000, short_factor [1.0, 1.3, 1.9, 2.7], long_factor "
            "[1.2, 1.8, 2.9, 3.9], original_max_position_embeddings 16 (also at the top level of config.json: "
            "Phi3Config copies the top-level value into rope_parameters, and prepare_inputs_for_generation reads "
            "the top-level one), partial_rotary_factor 1.0 (added by Phi3Config); max_position_embeddings 64; no "
            "factor, so factor = 64 / 16 = 4 and attention_factor = sqrt(1 + ln(4) / ln(16)) = 1.2247449, which "
            "multiplies cos and sin with either factor set.",
            "inv_freq[i] = 1 / (ext[i] * rope_theta ** (2i / 8)), ext = short_factor or long_factor. rope.inv_freq "
            "is the short set (built at init); rope.inv_freq_at_seq_len has {16: short, 17: long}.",
            "which set (transformers 5.25 modeling_rope_utils.dynamic_rope_update -> longrope_frequency_update): "
            "every forward of Phi3RotaryEmbedding takes seq_len = max(position_ids) + 1 over the whole batch of "
            "that forward and uses long_factor if seq_len > original_max_position_embeddings (16), else "
            "short_factor. Nothing is remembered between forwards. In a cached decode step position_ids holds only "
            "the new token's position, so keys already in the cache keep the rotation they got.",
            "Phi3ForCausalLM.prepare_inputs_for_generation: when a cache is passed (generate's DynamicCache, "
            "truthy), input_ids.shape[1] (the whole sequence so far, left padding included) >= "
            "original_max_position_embeddings + 1 (17) and cache.get_seq_length() <= 16, it drops the cache and "
            "feeds the whole sequence again: the step where the sequence reaches 17 tokens recomputes every "
            "position with long_factor, so cached generate equals use_cache=False (checks ..._cached_equals_"
            "uncached are true).",
            "greedy single-1 (8 prompt tokens, 12 new): new tokens 1-9 are chosen with short_factor (positions <= "
            "15); the 10th step feeds all 17 tokens (positions 0-16, long_factor, fresh cache); tokens 10-12 use "
            "long_factor. Prompt 0 (26 tokens), the chat prompt (22) and the padded batch (26 columns, positions "
            "up to 25) use long_factor from the prefill on; in the batch, prompt 1's row is rotated with "
            "long_factor because seq_len is the batch maximum, so greedy_batch_equals_singles is false. Beam and "
            "eos runs of prompt 1 alone (at most 16 tokens) never switch. The logits record (positions up to 25) "
            "is all long_factor.",
        ],
    ),
    Spec(
        "tiny-gpt2", "GPT2Config", "GPT2LMHeadModel",
        dict(
            vocab_size=VOCAB_SIZE,
            n_embd=32,
            n_layer=2,
            n_head=4,
            n_inner=64,
            n_positions=64,
            initializer_range=INIT_RANGE,
            bos_token_id=DECODER_BOS,
            eos_token_id=DECODER_EOS,
            pad_token_id=DECODER_PAD,
        ),
        add_bos=False,
        notes=[
            "the tokenizer adds no <s> (GPT-2 style ByteLevel post-processor)",
            "learned absolute positions: generate passes position_ids = cumsum(mask) - 1 (pads: 0), so a left-padded "
            "row starts at position 0 like the unpadded prompt",
        ],
    ),
    Spec("tiny-llama-seqcls", "LlamaConfig", "LlamaForSequenceClassification", llama_like(), kind="seqcls"),
    Spec(
        "tiny-qwen2-seqcls", "Qwen2Config", "Qwen2ForSequenceClassification",
        llama_like(tie_word_embeddings=False, use_sliding_window=False), kind="seqcls",
    ),
    # The seq-cls twins below have their causal fixture's config (sizes, RoPE, family options) with
    # tie_word_embeddings false; 5.25's Mistral/Qwen3/Gemma2/Phi3 heads are all GenericForSequenceClassification
    # (modeling_layers.py), GPT-2's is its own GPT2ForSequenceClassification with the same pooling rule.
    Spec(
        "tiny-mistral-seqcls", "MistralConfig", "MistralForSequenceClassification",
        llama_like(sliding_window=8), kind="seqcls",
        notes=SEQCLS_GENERIC_NOTES + [
            "sliding_window 8 as tiny-mistral: query i attends keys j with i - 8 < j <= i; in each layer the pooled "
            "token 18 of the 19-token text attends positions 11-18 only",
        ],
    ),
    Spec(
        "tiny-qwen3-seqcls", "Qwen3Config", "Qwen3ForSequenceClassification",
        llama_like(
            tie_word_embeddings=False, head_dim=16, use_sliding_window=False, rope_parameters=rope(theta=1000000.0)
        ),
        kind="seqcls",
        notes=SEQCLS_GENERIC_NOTES + [
            "as tiny-qwen3: head_dim 16 != hidden/heads; q_norm/k_norm are per-head RMSNorms over head_dim before "
            "RoPE; no q/k/v biases",
            "rope_parameters = {rope_type: default, rope_theta: 1000000.0}",
        ],
    ),
    Spec(
        "tiny-gemma2-seqcls", "Gemma2Config", "Gemma2ForSequenceClassification",
        llama_like(
            tie_word_embeddings=False,
            head_dim=16,
            query_pre_attn_scalar=24,
            sliding_window=8,
            attn_logit_softcapping=5.0,
            final_logit_softcapping=4.0,
            hidden_activation="gelu_pytorch_tanh",
        ),
        kind="seqcls",
        notes=SEQCLS_GENERIC_NOTES + [
            "final_logit_softcapping (4.0, kept in config.json) is NOT applied to the class logits: 5.25 applies "
            "it only in Gemma2ForCausalLM.forward to the lm_head output; the generic seq-cls head returns "
            "score(hidden)[pooled] as is (the script asserts this equality; capped, the batch's -3.3815932 would "
            "be 4 * tanh(-3.3815932 / 4) = -2.7546)",
            "attn_logit_softcapping (5.0) is applied, inside Gemma2Model's attention, as in tiny-gemma2",
            "as tiny-gemma2: layer 0 uses the sliding window 8, layer 1 global attention; attention scale "
            "query_pre_attn_scalar ** -0.5 (24); embeddings times sqrt(hidden_size); RMSNorm gains (1 + w), "
            "the final model.norm included (score reads its output)",
        ],
    ),
    Spec(
        "tiny-phi3-seqcls", "Phi3Config", "Phi3ForSequenceClassification",
        llama_like(sliding_window=None), kind="seqcls",
        notes=SEQCLS_GENERIC_NOTES + [
            "as tiny-phi3: fused self_attn.qkv_proj ([q; k; v] rows) and mlp.gate_up_proj ([gate; up] rows); "
            "rope_type default (no longrope), sliding_window null",
        ],
    ),
    Spec(
        "tiny-gpt2-seqcls", "GPT2Config", "GPT2ForSequenceClassification",
        dict(
            vocab_size=VOCAB_SIZE,
            n_embd=32,
            n_layer=2,
            n_head=4,
            n_inner=64,
            n_positions=64,
            initializer_range=INIT_RANGE,
            bos_token_id=DECODER_BOS,
            eos_token_id=DECODER_EOS,
            # GPT2Config's pad_token_id defaults to None, and GPT2ForSequenceClassification then refuses batches
            # (it pools index -1 for a single row): set it, as tiny-gpt2 does.
            pad_token_id=DECODER_PAD,
            tie_word_embeddings=False,
        ),
        kind="seqcls",
        add_bos=False,
        notes=[
            "GPT2ForSequenceClassification (5.25, not the generic class): base model `transformer` (GPT2Model, "
            "keys transformer.*), head `score` = Linear(n_embd, num_labels, bias=False) on the output of "
            "transformer.ln_f; no lm_head. Pooling as the generic head: argmax(arange(T) * (input_ids != "
            "config.pad_token_id)); GPT2Config defaults pad_token_id to None (then a batch > 1 raises and a "
            "single row pools index -1), so config.json sets pad_token_id 0 (<pad>, the tokenizer's pad token).",
            "the tokenizer adds no <s> (GPT-2 style ByteLevel post-processor), so the texts start at their first "
            "word and the pooled index is one less than in the llama-style folders",
            "learned absolute positions: with no position_ids GPT2Model uses arange(T), which right padding keeps "
            "equal to the unpadded positions",
            "logits are float32 (the checkpoint's dtype); the head adds no cast or soft-capping",
        ],
    ),
]


def version_tuple(v: str) -> tuple:
    out = []
    for part in v.split(".")[:3]:
        digits = "".join(c for c in part if c.isdigit())
        out.append(int(digits or 0))
    return tuple(out)


def supported(spec: Spec) -> bool:
    import transformers

    return version_tuple(transformers.__version__) >= version_tuple(spec.min_transformers)


# ---------------------------------------------------------------------------
# Building
# ---------------------------------------------------------------------------

def make_config(spec: Spec):
    import transformers

    cfg = dict(spec.config)
    if spec.kind == "seqcls":
        cfg.update(num_labels=NUM_LABELS, id2label=dict(CLS_LABELS), label2id={v: k for k, v in CLS_LABELS.items()})
    return getattr(transformers, spec.config_class)(**cfg)


def build_checkpoint(spec: Spec, out_dir: Path):
    import transformers

    tok = common.make_bytelevel_bpe_tokenizer(
        VOCAB_SIZE, add_bos=spec.add_bos, padding_side="right" if spec.kind == "seqcls" else "left"
    )
    tok.model_input_names = ["input_ids", "attention_mask"]
    tok.init_kwargs["model_input_names"] = ["input_ids", "attention_mask"]

    common.seed_all(common.SEED)
    config = make_config(spec)
    model = getattr(transformers, spec.model_class)(config).eval()
    common.perturb_decoder(model, order=perturb_order(spec, model))
    for key, value in spec.generation_overrides.items():
        setattr(model.generation_config, key, value)

    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    model.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    check_saved_config(spec, out_dir)


def perturb_order(spec: Spec, model) -> list[str] | None:
    """named_parameters() order, with each layer's `legacy_layer_order` names moved into that order."""
    if not spec.legacy_layer_order:
        return None
    names = [n for n, _ in model.named_parameters()]
    out = list(names)
    for i in range(model.config.num_hidden_layers):
        prefix = f"model.layers.{i}."
        wanted = [prefix + suffix for suffix in spec.legacy_layer_order]
        slots = sorted(out.index(n) for n in wanted)
        for slot, name in zip(slots, wanted):
            out[slot] = name
    assert sorted(out) == sorted(names)
    return out


def check_saved_config(spec: Spec, out_dir: Path) -> None:
    """The saved config.json carries RoPE the 5.x way: `rope_parameters`, no top-level rope_theta / rope_scaling."""
    saved = json.loads((out_dir / "config.json").read_text())
    if "rope_parameters" not in spec.config:
        return
    assert "rope_theta" not in saved and "rope_scaling" not in saved, (spec.name, saved)
    rp = saved["rope_parameters"]
    for key, value in spec.config["rope_parameters"].items():
        assert rp.get(key) == value, (spec.name, key, rp.get(key), value)


def load_model(spec: Spec, out_dir: Path):
    import transformers

    cls = getattr(transformers, spec.model_class)
    return cls.from_pretrained(out_dir, attn_implementation=ATTN_IMPLEMENTATION, dtype=torch.float32).eval()


# ---------------------------------------------------------------------------
# Recording: causal LMs
# ---------------------------------------------------------------------------

def eos_ids(model) -> list[int]:
    eos = model.generation_config.eos_token_id
    if eos is None:
        return []
    return list(eos) if isinstance(eos, (list, tuple)) else [eos]


@torch.no_grad()
def record_logits(spec: Spec, out_dir: Path, tok) -> dict:
    model = load_model(spec, out_dir)
    enc = tok(DECODER_PROMPTS, padding=True, return_tensors="pt")
    mask = enc["attention_mask"]
    # exactly what generate() passes to the first forward (5.x: pads get position 0, 4.46 gave them 1)
    position_ids = model._prepare_position_ids_for_generation(enc["input_ids"], {"attention_mask": mask})
    assert position_ids.tolist() == (mask.cumsum(-1) - 1).clamp(min=0).tolist()
    logits = model(input_ids=enc["input_ids"], attention_mask=mask, position_ids=position_ids, use_cache=False).logits
    return {
        "prompts": DECODER_PROMPTS,
        "padding_side": tok.padding_side,
        "input_ids": enc["input_ids"],
        "attention_mask": mask,
        "position_ids": position_ids,
        "logits_shape": list(logits.shape),
        "logits_stride": LOGITS_STRIDE,
        "logits_strided": common.mask_pads(logits[..., ::LOGITS_STRIDE], mask),
        "logits_logsumexp": common.mask_pads(torch.logsumexp(logits, dim=-1), mask),
        "logits_argmax": common.mask_pads(logits.argmax(dim=-1), mask),
        "logits_last": logits[:, -1, :],
    }


def greedy_inputs(tok) -> list[tuple[str, dict, dict]]:
    """(name, encoding, tokenizer kwargs) for the greedy / beam cases."""
    cases = []
    for i, prompt in enumerate(DECODER_PROMPTS):
        cases.append((f"single-{i}", {"text": prompt}, tok(prompt, return_tensors="pt")))
    chat = tok.apply_chat_template(DECODER_CHAT, add_generation_prompt=True, tokenize=False)
    cases.append(
        ("chat", {"messages": DECODER_CHAT, "rendered": chat, "add_special_tokens": False},
         tok(chat, add_special_tokens=False, return_tensors="pt"))
    )
    cases.append(("batch", {"text": DECODER_PROMPTS}, tok(DECODER_PROMPTS, padding=True, return_tensors="pt")))
    return cases


def min_margins(logits_steps, num_rows: int) -> list[float]:
    """Per row, the smallest top-1 minus top-2 raw logit over the generated steps."""
    out = [float("inf")] * num_rows
    for step in logits_steps:
        top2 = step.topk(2, dim=-1).values
        margin = (top2[:, 0] - top2[:, 1]).tolist()
        out = [min(a, b) for a, b in zip(out, margin)]
    return out


@torch.no_grad()
def generate_both(spec: Spec, out_dir: Path, enc, kwargs: dict, **extra):
    """generate() as a user calls it, and the same with use_cache=False (full recomputation)."""
    out = load_model(spec, out_dir).generate(**enc, **kwargs, return_dict_in_generate=True, **extra)
    ref = load_model(spec, out_dir).generate(**enc, **kwargs, return_dict_in_generate=True, use_cache=False, **extra)
    return out, ref


def add_uncached(record: dict, out, ref, checks: dict, name: str, score_key: str | None = None) -> None:
    """Keep the uncached result beside the cached one when Python disagrees with itself."""
    same = out.sequences.tolist() == ref.sequences.tolist()
    checks[f"{name}_cached_equals_uncached"] = same
    if not same:
        record["sequences_uncached"] = ref.sequences
        if score_key:
            record[f"{score_key}_uncached"] = getattr(ref, score_key)


@torch.no_grad()
def record_greedy(spec: Spec, out_dir: Path, tok) -> tuple[dict, dict]:
    cases = greedy_inputs(tok)
    eos = eos_ids(load_model(spec, out_dir))

    def run(kwargs):
        return [(name, inputs, enc, *generate_both(spec, out_dir, enc, kwargs, output_logits=True))
                for name, inputs, enc in cases]

    kwargs = {"do_sample": False, "max_new_tokens": GREEDY_NEW_TOKENS}
    results = run(kwargs)

    def stopped_early(enc, seqs):
        n = enc["input_ids"].shape[-1]
        return any(seq.shape[-1] < n + GREEDY_NEW_TOKENS or any(t in eos for t in seq[n:].tolist()) for seq in seqs)

    if any(stopped_early(enc, out.sequences) or stopped_early(enc, ref.sequences) for _, _, enc, out, ref in results):
        kwargs["min_new_tokens"] = GREEDY_NEW_TOKENS
        results = run(kwargs)

    records, checks, singles = [], {}, {}
    for name, inputs, enc, out, ref in results:
        record = {
            "name": name,
            **inputs,
            "input_ids": enc["input_ids"],
            "attention_mask": enc["attention_mask"],
            "sequences": out.sequences,
            "min_top2_margin": min_margins(out.logits, out.sequences.shape[0]),
        }
        add_uncached(record, out, ref, checks, f"greedy_{name}")
        records.append(record)
        if name.startswith("single-"):
            singles[int(name.split("-")[1])] = out.sequences[0].tolist()

    _, _, batch_enc, batch, _ = next(r for r in results if r[0] == "batch")
    same = True
    for row, seq in enumerate(batch.sequences.tolist()):
        n_pad = int((batch_enc["attention_mask"][row] == 0).sum())
        same &= seq[n_pad:] == singles[row]
    checks["greedy_batch_equals_singles"] = same

    return {"kwargs": kwargs, "eos_token_ids": eos, "cases": records}, checks


@torch.no_grad()
def record_beam(spec: Spec, out_dir: Path, tok, checks: dict) -> dict:
    records = []
    for name, inputs, enc in greedy_inputs(tok):
        if name == "chat":
            continue
        out, ref = generate_both(spec, out_dir, enc, BEAM_KWARGS, output_scores=True)
        record = {
            "name": name,
            **inputs,
            "input_ids": enc["input_ids"],
            "attention_mask": enc["attention_mask"],
            "sequences": out.sequences,
            "sequences_scores": out.sequences_scores,
        }
        add_uncached(record, out, ref, checks, f"beam_{name}", "sequences_scores")
        records.append(record)
    return {"kwargs": BEAM_KWARGS, "cases": records}


@torch.no_grad()
def record_eos_cases(spec: Spec, out_dir: Path, tok, greedy: dict, checks: dict) -> tuple[dict, dict]:
    """Greedy and beam runs where an EOS is actually produced.

    The random models never pick </s>, so these runs name as eos_token_id the third
    token that greedy decoding of prompt 1 produced: prompt 1 (alone and as the
    batch's second row) then stops after 3 tokens, the batch pads the finished row
    with pad_token_id, and beam search finishes hypotheses early.
    """
    single1 = next(c for c in greedy["cases"] if c["name"] == "single-1")
    n_prompt = single1["input_ids"].shape[-1]
    eos_token = int(single1["sequences"][0, n_prompt + 2])
    cases = [c for c in greedy_inputs(tok) if c[0] != "chat"]

    g_kwargs = {"do_sample": False, "max_new_tokens": GREEDY_NEW_TOKENS, "eos_token_id": eos_token}
    g_records = []
    for name, inputs, enc in cases:
        out, ref = generate_both(spec, out_dir, enc, g_kwargs)
        record = {"name": name, **inputs, "input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"],
                  "sequences": out.sequences}
        add_uncached(record, out, ref, checks, f"greedy_eos_{name}")
        g_records.append(record)

    b_kwargs = {**BEAM_KWARGS, "eos_token_id": eos_token}
    b_records = []
    for name, inputs, enc in cases:
        out, ref = generate_both(spec, out_dir, enc, b_kwargs, output_scores=True)
        record = {"name": name, **inputs, "input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"],
                  "sequences": out.sequences, "sequences_scores": out.sequences_scores}
        add_uncached(record, out, ref, checks, f"beam_eos_{name}", "sequences_scores")
        b_records.append(record)
    return {"kwargs": g_kwargs, "cases": g_records}, {"kwargs": b_kwargs, "cases": b_records}


def record_rope(spec: Spec, out_dir: Path) -> dict | None:
    model = load_model(spec, out_dir)
    info = common.rope_info(model)
    if info is None:
        return None
    # 5.x: config.rope_scaling is a deprecated alias of config.rope_parameters (so it carries rope_type and
    # rope_theta even without scaling); both keys are kept, with the same value.
    info["rope_scaling"] = model.config.rope_parameters
    info["rope_parameters"] = model.config.rope_parameters
    if info["rope_type"] in ("dynamic", "longrope"):
        from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

        fn = ROPE_INIT_FUNCTIONS[info["rope_type"]]
        lengths = (16, 17, 20, 27, 39) if info["rope_type"] == "dynamic" else (16, 17)
        info["inv_freq_at_seq_len"] = {str(n): fn(model.config, "cpu", seq_len=n)[0] for n in lengths}
    return info


# ---------------------------------------------------------------------------
# Recording: sequence classification
# ---------------------------------------------------------------------------

@torch.no_grad()
def record_seqcls(spec: Spec, out_dir: Path, tok) -> dict:
    model = load_model(spec, out_dir)
    assert tok.padding_side == "right"
    enc = tok(DECODER_CLS_TEXTS, padding=True, return_tensors="pt")
    logits = model(**enc).logits
    # what the model pools (5.x GenericForSequenceClassification): the rightmost token that is not pad_token_id,
    # argmax(arange(T) * (input_ids != pad)); with right padding, the token before the first pad (as in 4.46.3)
    pad = model.config.pad_token_id
    assert pad is not None and tok.pad_token_id == pad, (spec.name, pad, tok.pad_token_id)
    ids = enc["input_ids"]
    pooled = (torch.arange(ids.shape[-1]) * (ids != pad).int()).argmax(-1)
    assert pooled.tolist() == (enc["attention_mask"].sum(-1) - 1).tolist()
    # the class logits are score(last hidden state) at the pooled token and nothing else (no soft-capping, no cast)
    hidden = getattr(model, model.base_model_prefix)(**enc).last_hidden_state
    assert torch.equal(model.score(hidden)[torch.arange(ids.shape[0]), pooled], logits), spec.name
    singles = []
    for text in DECODER_CLS_TEXTS:
        e = tok(text, return_tensors="pt")
        singles.append({"text": text, "input_ids": e["input_ids"], "logits": model(**e).logits})
    # 5.x pools the rightmost non-pad token: a row left-padded, and a row whose last id is not
    # pad after padding (4.46.3 read the token before the first pad there).
    left = tok(DECODER_CLS_TEXTS, padding=True, padding_side="left", return_tensors="pt")
    trailing_ids = enc["input_ids"].clone()
    trailing_ids[0, -1] = 7
    pooling = {
        "left_padded": {"input_ids": left["input_ids"], "attention_mask": left["attention_mask"],
                        "logits": model(**left).logits},
        "trailing_token": {"input_ids": trailing_ids, "attention_mask": enc["attention_mask"],
                           "logits": model(input_ids=trailing_ids, attention_mask=enc["attention_mask"]).logits},
    }
    return {
        "pooling": pooling,
        "batch": {
            "text": DECODER_CLS_TEXTS,
            "padding_side": "right",
            "input_ids": enc["input_ids"],
            "attention_mask": enc["attention_mask"],
            "pooled_index": pooled,
            "logits": logits,
        },
        "singles": singles,
    }


# ---------------------------------------------------------------------------
# Driver
# ---------------------------------------------------------------------------

def make_one(spec: Spec) -> None:
    import transformers

    out_dir = FIXTURES / spec.name
    build_checkpoint(spec, out_dir)
    tok = transformers.AutoTokenizer.from_pretrained(out_dir)
    assert tok.is_fast

    notes = list(spec.notes)
    if spec.kind == "causal":
        notes += CAUSAL_NOTES
    expected = {
        "meta": common.meta(
            SCRIPT,
            **stack_versions(),
            checkpoint=spec.name,
            model_class=spec.model_class,
            tokenizer_class=type(tok).__name__,
            attn_implementation=ATTN_IMPLEMENTATION,
            notes=notes,
        ),
    }
    if spec.kind == "causal":
        greedy, checks = record_greedy(spec, out_dir, tok)
        expected["rope"] = record_rope(spec, out_dir)
        expected["logits"] = record_logits(spec, out_dir, tok)
        expected["greedy"] = greedy
        expected["beam"] = record_beam(spec, out_dir, tok, checks)
        expected["greedy_eos"], expected["beam_eos"] = record_eos_cases(spec, out_dir, tok, greedy, checks)
        expected["generation_config"] = json.loads((out_dir / "generation_config.json").read_text())
        expected["checks"] = checks
        for key, ok in checks.items():
            if not ok:
                print(f"  note: {spec.name}: {key} is false", file=sys.stderr)
    else:
        expected["seqcls"] = record_seqcls(spec, out_dir, tok)
    if expected.get("rope") is None:
        expected.pop("rope", None)
    common.write_json(out_dir / "expected.json", expected)


# ---------------------------------------------------------------------------
# logits-processors.json
# ---------------------------------------------------------------------------

@torch.no_grad()
def make_logits_processors() -> None:
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, LogitsProcessorList
    from transformers import generation as g

    gen = torch.Generator().manual_seed(common.SEED)
    scores = torch.randn(2, 50, generator=gen)
    input_ids = torch.tensor([[3, 7, 3, 12, 7, 3], [1, 2, 5, 1, 2, 1]])
    bad_words_ids = [[4], [2], [7, 8], [3, 9], [1, 11]]

    procs = [
        ("TemperatureLogitsWarper", {"temperature": 0.7}),
        ("TopKLogitsWarper", {"top_k": 5}),
        ("TopPLogitsWarper", {"top_p": 0.9}),
        ("TopPLogitsWarper", {"top_p": 0.05, "min_tokens_to_keep": 3}),
        ("MinPLogitsWarper", {"min_p": 0.1}),
        ("TypicalLogitsWarper", {"mass": 0.9}),
        ("EpsilonLogitsWarper", {"epsilon": 0.02}),
        ("EtaLogitsWarper", {"epsilon": 0.02}),
        ("RepetitionPenaltyLogitsProcessor", {"penalty": 1.3}),
        ("NoRepeatNGramLogitsProcessor", {"ngram_size": 2}),
        ("NoRepeatNGramLogitsProcessor", {"ngram_size": 3}),
        ("NoBadWordsLogitsProcessor", {"bad_words_ids": bad_words_ids, "eos_token_id": 2}),
        ("MinLengthLogitsProcessor", {"min_length": 10, "eos_token_id": [2, 4]}),
        ("MinNewTokensLengthLogitsProcessor", {"prompt_length_to_skip": 2, "min_new_tokens": 5, "eos_token_id": 2}),
        ("SuppressTokensLogitsProcessor", {"suppress_tokens": [0, 5, 49]}),
    ]
    records = []
    for cls_name, kwargs in procs:
        proc = getattr(g, cls_name)(**kwargs)
        out = proc(input_ids, scores.clone())
        records.append({"class": cls_name, "kwargs": kwargs, "output": common.inf_to_str(out)})

    # The processor chain generate() builds from a GenerationConfig, in its order.
    chains = []
    tiny = LlamaForCausalLM(LlamaConfig(vocab_size=50, hidden_size=8, intermediate_size=8, num_hidden_layers=1,
                                        num_attention_heads=2, num_key_value_heads=1))
    for gen_kwargs in [
        {"do_sample": True, "temperature": 0.7, "top_k": 5, "top_p": 0.9},
        {"do_sample": True, "temperature": 0.7, "top_k": 5, "top_p": 0.9, "min_p": 0.1, "typical_p": 0.9,
         "repetition_penalty": 1.3, "no_repeat_ngram_size": 2, "bad_words_ids": [[4], [7, 8]]},
        {"do_sample": True, "temperature": 1.3, "top_k": 0, "top_p": 0.5},
        {"do_sample": True, "num_beams": 3, "temperature": 0.7, "top_k": 5, "top_p": 0.9},
    ]:
        config = GenerationConfig(eos_token_id=2, pad_token_id=0, **gen_kwargs)
        tiny._prepare_special_tokens(config, kwargs_has_attention_mask=True, device="cpu")
        chain = tiny._get_logits_processor(
            generation_config=config,
            input_ids_seq_length=input_ids.shape[-1],
            encoder_input_ids=input_ids,
            prefix_allowed_tokens_fn=None,
            logits_processor=LogitsProcessorList(),
            device="cpu",
            model_kwargs={},
        )
        out = chain(input_ids, scores.clone())
        chains.append(
            {
                "generation_config": gen_kwargs,
                "processors": [type(p).__name__ for p in chain],
                "output": common.inf_to_str(out),
            }
        )

    expected = {
        "meta": common.meta(
            SCRIPT,
            notes=[
                "each record: output = Class(**kwargs)(input_ids, scores.clone()); filtered values are -inf",
                "chains: model._get_logits_processor(GenerationConfig(eos_token_id=2, pad_token_id=0, **kwargs)) "
                "applied to (input_ids, scores) in list order; min_tokens_to_keep is 2 when num_beams > 1",
                "non-finite floats are written as the strings \"-inf\", \"inf\", \"nan\"",
            ],
        ),
        "input_ids": input_ids,
        "scores": scores,
        "processors": records,
        "chains": chains,
    }
    common.write_json(FIXTURES / "logits-processors.json", expected)


def stack_versions() -> dict:
    """Versions recorded in meta beside common.meta's: the Hub client and the chat-template renderer."""
    import huggingface_hub
    import jinja2

    return {"huggingface_hub": huggingface_hub.__version__, "jinja2": jinja2.__version__}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default="", help="comma-separated names (folders, or logits-processors) to (re)build")
    args = ap.parse_args()
    only = {s for s in args.only.split(",") if s}

    common.setup()
    import transformers

    if version_tuple(transformers.__version__) < (5, 0, 0):
        sys.exit(
            f"make_decoders.py records with transformers 5.x (pinned 5.25.0, tools/golden/requirements.txt); "
            f"this is {transformers.__version__}"
        )
    transformers.utils.logging.disable_progress_bar()

    for spec in SPECS:
        if only and spec.name not in only:
            continue
        if not supported(spec):
            print(
                f"== {spec.name}: skipped, needs transformers >= {spec.min_transformers} "
                f"(this is {transformers.__version__}); see tools/golden/README.md",
                file=sys.stderr,
            )
            continue
        print(f"== {spec.name}", file=sys.stderr)
        make_one(spec)
    if not only or "logits-processors" in only:
        make_logits_processors()


if __name__ == "__main__":
    main()
