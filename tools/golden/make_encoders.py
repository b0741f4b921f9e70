"""Build tiny random BERT / DistilBERT / RoBERTa checkpoints and record golden outputs.

For every checkpoint folder tests/fixtures/tiny-<family>-<head>/ this writes
    config.json, model.safetensors, tokenizer.json, tokenizer_config.json (save_pretrained;
    5.x writes no vocab.txt / vocab.json / merges.txt / special_tokens_map.json and no
    generation_config.json for the MLM heads), expected.json ({"meta", "model", "pipelines"}).

The folder is re-loaded with from_pretrained before anything is recorded, so the
expected outputs are those of the files on disk.

Reference stack: transformers 5.25.0 (tools/golden/requirements.txt); the script refuses
to run under 4.x. The weights are those of the 4.46.3 recordings (`legacy_construction`
replays 4.46.3's random draws where 5.x builds modules differently). The
question-answering pipeline no longer exists in 5.x: its cases are recorded with 4.46.3's
algorithm (tools/golden/qa_pipeline_446.py), see meta.notes of the tiny-*-qa fixtures.

Usage:  python tools/golden/make_encoders.py [--only tiny-bert-base,tiny-roberta-qa]
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import math
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from common import (  # noqa: E402
    CLS_PAIR,
    CLS_TEXT,
    CLS_TEXTS,
    FIXTURES,
    MODEL_PAIR,
    MODEL_TEXTS,
    NER_TEXTS,
    QA_CONTEXT,
    QA_QUESTION,
    ZS_LABELS,
    ZS_TEMPLATE,
    ZS_TEXT,
)

SCRIPT = "make_encoders.py"

NLI_LABELS = {0: "contradiction", 1: "entailment", 2: "neutral"}
MULTI_LABELS = {0: "NEG", 1: "POS"}
NER_LABELS = {0: "O", 1: "B-PER", 2: "I-PER", 3: "B-LOC", 4: "I-LOC", 5: "B-ORG", 6: "I-ORG"}

# Larger than the default 0.02 so that attention is far from uniform and
# outputs depend clearly on the whole input (zero-shot scores, CLS pooling).
INIT_RANGE = 0.2


# ---------------------------------------------------------------------------
# Families and heads
# ---------------------------------------------------------------------------

@dataclass
class Family:
    name: str
    make_config: Callable[[int], object]  # vocab_size -> config
    make_tokenizer: Callable[[Path], object]
    classes: dict  # head -> transformers class name
    mask: str
    short: bool  # fewer pipeline cases


def bert_config(vocab_size: int):
    from transformers import BertConfig

    return BertConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=37,
        max_position_embeddings=128,
        type_vocab_size=2,
        pad_token_id=0,
        initializer_range=INIT_RANGE,
    )


def distilbert_config(vocab_size: int):
    from transformers import DistilBertConfig

    return DistilBertConfig(
        vocab_size=vocab_size,
        dim=32,
        n_layers=2,
        n_heads=4,
        hidden_dim=37,
        max_position_embeddings=128,
        pad_token_id=0,
        initializer_range=INIT_RANGE,
    )


def roberta_config(vocab_size: int):
    from transformers import RobertaConfig

    return RobertaConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=37,
        max_position_embeddings=130,
        type_vocab_size=1,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
        initializer_range=INIT_RANGE,
    )


FAMILIES = [
    Family(
        name="bert",
        make_config=bert_config,
        make_tokenizer=lambda d: common.make_wordpiece_tokenizer(d, "BertTokenizerFast"),
        classes={
            "base": "BertModel",
            "seqcls": "BertForSequenceClassification",
            "seqcls-multi": "BertForSequenceClassification",
            "tokcls": "BertForTokenClassification",
            "qa": "BertForQuestionAnswering",
            "mlm": "BertForMaskedLM",
        },
        mask="[MASK]",
        short=False,
    ),
    Family(
        name="distilbert",
        make_config=distilbert_config,
        make_tokenizer=lambda d: common.make_wordpiece_tokenizer(d, "DistilBertTokenizerFast"),
        classes={
            "base": "DistilBertModel",
            "seqcls": "DistilBertForSequenceClassification",
            "tokcls": "DistilBertForTokenClassification",
            "qa": "DistilBertForQuestionAnswering",
            "mlm": "DistilBertForMaskedLM",
        },
        mask="[MASK]",
        short=True,
    ),
    Family(
        name="roberta",
        make_config=roberta_config,
        make_tokenizer=common.make_roberta_tokenizer,
        classes={
            "base": "RobertaModel",
            "seqcls": "RobertaForSequenceClassification",
            "tokcls": "RobertaForTokenClassification",
            "qa": "RobertaForQuestionAnswering",
            "mlm": "RobertaForMaskedLM",
        },
        mask="<mask>",
        short=True,
    ),
]


def head_config(config, head: str):
    """Label maps / problem type for each head."""
    if head == "seqcls":
        labels = NLI_LABELS
    elif head == "seqcls-multi":
        labels = MULTI_LABELS
        config.problem_type = "multi_label_classification"
    elif head == "tokcls":
        labels = NER_LABELS
    else:
        return config
    config.num_labels = len(labels)
    config.id2label = dict(labels)
    config.label2id = {v: k for k, v in labels.items()}
    return config


# ---------------------------------------------------------------------------
# Model construction
# ---------------------------------------------------------------------------

@torch.no_grad()
def centre_token_classifier(model, tokenizer) -> None:
    """Give the token classifier the bias -W @ mean(h) over a few texts.

    Random hidden states share a large common component, so an uncentred random
    classifier predicts one or two labels for every token. Centring makes the
    argmax depend on the token, so NER aggregation builds varied entity groups.
    """
    # A copy: a padded call leaves its padding settings on the backend
    # tokenizer, which would then be written into tokenizer.json.
    tokenizer = copy.deepcopy(tokenizer)
    enc = tokenizer(NER_TEXTS + MODEL_TEXTS, padding=True, return_tensors="pt")
    hidden = model.base_model(**enc).last_hidden_state
    mean = hidden[enc["attention_mask"].bool()].mean(0)
    model.classifier.bias.copy_(-(model.classifier.weight @ mean))


@torch.no_grad()
def perturb(model) -> None:
    """Make every weight matter.

    Random init leaves biases at 0 and LayerNorm weights at 1, so an
    implementation that forgot them would still match; give them random values.
    """
    for name, p in model.named_parameters():
        if name.endswith(".bias"):
            p.normal_(0.0, 0.05)
        elif p.dim() == 1 and name.endswith(".weight"):  # LayerNorm gains
            p.copy_(1.0 + 0.1 * torch.randn_like(p))


@contextlib.contextmanager
def legacy_construction():
    """Make 5.x model construction consume the random stream as transformers 4.46.3 did.

    The weights are those of the 4.46.3 recordings: seed, construct (torch's default init
    draws for every Linear / Embedding), `_init_weights` (normal(0, INIT_RANGE) in module
    post-order), then `perturb`. Two 5.x modules draw differently while being built:

    * `BertLMPredictionHead`: 5.x builds `decoder = nn.Linear(hidden, vocab, bias=True)`
      (4.46.3: bias=False, the bias being the tied `cls.predictions.bias`), one extra
      uniform_ draw of `vocab` values that shifted every later draw (tiny-bert-mlm's
      `cls.predictions.transform.dense.weight` and every perturbed bias / gain).
    * `RobertaEmbeddings`: 4.46.3 (a copy of BertEmbeddings.__init__) built word,
      position (without padding_idx), token_type, and then position again with
      padding_idx, keeping `position_embeddings` in the second slot; 5.x builds word,
      token_type, position once. Both the construction draws and the init / perturb order
      (word, position, token_type, LayerNorm) differed, so every RoBERTa weight did.

    Each is wrapped: the 5.x __init__ runs, the random state is put back, and the 4.46.3
    draws are replayed (into the same parameters, which init overwrites anyway).
    """
    from transformers.models.bert import modeling_bert
    from transformers.models.roberta import modeling_roberta

    bert_head_init = modeling_bert.BertLMPredictionHead.__init__
    roberta_emb_init = modeling_roberta.RobertaEmbeddings.__init__

    def bert_head(self, config):
        state = torch.get_rng_state()
        bert_head_init(self, config)
        torch.set_rng_state(state)
        self.transform.dense.reset_parameters()
        # nn.Linear.reset_parameters without the bias draw
        torch.nn.init.kaiming_uniform_(self.decoder.weight, a=math.sqrt(5))

    def roberta_embeddings(self, config):
        state = torch.get_rng_state()
        roberta_emb_init(self, config)
        torch.set_rng_state(state)
        self.word_embeddings.reset_parameters()
        torch.nn.Embedding(config.max_position_embeddings, config.hidden_size)  # the first, discarded one
        self.token_type_embeddings.reset_parameters()
        self.position_embeddings.reset_parameters()
        order = ["word_embeddings", "position_embeddings", "token_type_embeddings"]
        modules = dict(self._modules)
        self._modules.clear()
        for name in order + [n for n in modules if n not in order]:
            self._modules[name] = modules[name]

    modeling_bert.BertLMPredictionHead.__init__ = bert_head
    modeling_roberta.RobertaEmbeddings.__init__ = roberta_embeddings
    try:
        yield
    finally:
        modeling_bert.BertLMPredictionHead.__init__ = bert_head_init
        modeling_roberta.RobertaEmbeddings.__init__ = roberta_emb_init


def build_checkpoint(fam: Family, head: str, out_dir: Path, tokenizer) -> None:
    import transformers

    common.seed_all(common.SEED)
    config = head_config(fam.make_config(len(tokenizer)), head)
    cls = getattr(transformers, fam.classes[head])
    with legacy_construction():
        model = cls(config).eval()
    perturb(model)
    if head == "tokcls":
        centre_token_classifier(model, tokenizer)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    if fam.name == "roberta" and head == "mlm":
        store_decoder_bias(out_dir)


def store_decoder_bias(out_dir: Path) -> None:
    """Writes `lm_head.decoder.bias` beside `lm_head.bias`.

    transformers 4.46.3 saves only `lm_head.bias`; on load it re-ties the two biases the
    wrong way round and the bias becomes zero. With both keys stored it loads the real
    bias, so the recorded outputs are the model's true outputs. 5.25 also saves only
    `lm_head.bias` but loads it correctly either way; the second key is kept so that
    model.safetensors stays byte-identical to the 4.46.3 one (and 4.x still loads it).
    """
    from safetensors.torch import load_file, save_file

    path = out_dir / "model.safetensors"
    tensors = load_file(str(path))
    if "lm_head.decoder.bias" not in tensors:
        tensors["lm_head.decoder.bias"] = tensors["lm_head.bias"].clone()
        save_file(tensors, str(path), metadata={"format": "pt"})


# ---------------------------------------------------------------------------
# Recording
# ---------------------------------------------------------------------------

# Full MLM logits would be [batch, seq, vocab] (~20k floats per case); to keep
# fixtures small record every MLM_LOGITS_STRIDE-th vocab column plus, over the
# full vocab, the per-position logsumexp and argmax.
MLM_LOGITS_STRIDE = 16

OUTPUT_KEYS = {
    "base": ["last_hidden_state", "pooler_output"],
    "seqcls": ["logits"],
    "seqcls-multi": ["logits"],
    "tokcls": ["logits"],
    "qa": ["start_logits", "end_logits"],
    "mlm": ["logits"],
}


@torch.no_grad()
def record_model(model, tok, head: str) -> list[dict]:
    cases = []
    for name, text, pair in [
        ("batch", MODEL_TEXTS, None),
        ("pair", [MODEL_PAIR[0]], [MODEL_PAIR[1]]),
    ]:
        enc = tok(text, pair, padding=True, return_tensors="pt")
        out = model(**enc)
        outputs = {}
        for key in OUTPUT_KEYS[head]:
            value = getattr(out, key, None)
            if value is not None:  # DistilBertModel has no pooler
                outputs[key] = value
        if head == "mlm":
            logits = outputs.pop("logits")
            outputs = {
                "logits_stride": MLM_LOGITS_STRIDE,
                "logits_strided": logits[..., ::MLM_LOGITS_STRIDE],
                "logits_logsumexp": torch.logsumexp(logits, dim=-1),
                "logits_argmax": logits.argmax(dim=-1),
                "logits_shape": list(logits.shape),
            }
        cases.append(
            {
                "name": name,
                "text": text,
                "text_pair": pair,
                "input_ids": enc["input_ids"],
                "attention_mask": enc["attention_mask"],
                "token_type_ids": enc.get("token_type_ids"),
                "outputs": outputs,
            }
        )
    return cases


def pipeline_cases(fam: Family, head: str) -> list[tuple[str, object, dict]]:
    """(task, inputs, kwargs) triples; output = pipeline(task)(inputs, **kwargs)."""
    m = fam.mask
    short = fam.short
    if head == "base":
        cases = [("feature-extraction", "Hello world!", {})]
        if not short:
            cases += [
                ("feature-extraction", ["John lives in Paris.", "Hello world!"], {}),
                ("feature-extraction", "John lives in Paris.", {"tokenize_kwargs": {"truncation": True, "max_length": 5}}),
            ]
        return cases
    if head == "seqcls":
        cases = [
            ("text-classification", CLS_TEXT, {}),
            ("zero-shot-classification", ZS_TEXT, {"candidate_labels": ZS_LABELS}),
        ]
        if not short:
            cases += [
                ("text-classification", CLS_TEXTS, {}),
                ("text-classification", CLS_TEXT, {"top_k": None}),
                ("text-classification", CLS_TEXTS, {"top_k": 2}),
                ("text-classification", CLS_TEXT, {"top_k": None, "function_to_apply": "sigmoid"}),
                ("text-classification", CLS_TEXT, {"top_k": None, "function_to_apply": "softmax"}),
                ("text-classification", CLS_TEXT, {"top_k": None, "function_to_apply": "none"}),
                ("text-classification", CLS_TEXT, {"function_to_apply": "none"}),
                ("text-classification", CLS_PAIR, {}),
                ("text-classification", CLS_PAIR, {"top_k": None}),
                ("zero-shot-classification", ZS_TEXT, {"candidate_labels": ZS_LABELS, "multi_label": True}),
                ("zero-shot-classification", ZS_TEXT, {"candidate_labels": ZS_LABELS, "hypothesis_template": ZS_TEMPLATE}),
                ("zero-shot-classification", [ZS_TEXT, CLS_TEXT], {"candidate_labels": ZS_LABELS}),
                ("zero-shot-classification", ZS_TEXT, {"candidate_labels": "technology, sports"}),
            ]
        return cases
    if head == "seqcls-multi":
        return [
            ("text-classification", CLS_TEXT, {}),
            ("text-classification", CLS_TEXT, {"top_k": None}),
            ("text-classification", CLS_TEXTS, {"top_k": None}),
        ]
    if head == "tokcls":
        strategies = ["simple", "first"] if short else ["simple", "first", "average", "max"]
        cases = [("token-classification", NER_TEXTS, {})]
        cases += [("token-classification", NER_TEXTS, {"aggregation_strategy": s}) for s in strategies]
        if not short:
            cases += [
                ("token-classification", NER_TEXTS, {"aggregation_strategy": "none"}),
                ("token-classification", NER_TEXTS, {"aggregation_strategy": "none", "ignore_labels": []}),
                ("token-classification", NER_TEXTS[0], {"aggregation_strategy": "simple", "ignore_labels": []}),
            ]
        return cases
    if head == "mlm":
        cases = [("fill-mask", f"Paris is the capital of {m}.", {})]
        if not short:
            cases += [
                ("fill-mask", f"Paris is the capital of {m}.", {"top_k": 3}),
                ("fill-mask", f"Paris is the capital of {m}.", {"targets": ["france", "england"]}),
                ("fill-mask", f"The {m} is in {m} today.", {}),
                ("fill-mask", f"The {m} is in {m} today.", {"top_k": 2}),
                ("fill-mask", [f"Hello {m}!", f"John lives in {m}."], {"top_k": 2}),
            ]
        return cases
    if head == "qa":
        qa = {"question": QA_QUESTION, "context": QA_CONTEXT}
        long_qa = {"question": QA_QUESTION, "context": common.long_context()}
        cases = [("question-answering", qa, {})]
        if not short:
            cases += [
                ("question-answering", qa, {"top_k": 3}),
                ("question-answering", qa, {"max_answer_len": 3}),
                ("question-answering", qa, {"handle_impossible_answer": True}),
                ("question-answering", long_qa, {"max_seq_len": 64, "doc_stride": 16}),
                ("question-answering", long_qa, {"max_seq_len": 64, "doc_stride": 16, "top_k": 3}),
            ]
        else:
            cases += [("question-answering", long_qa, {"max_seq_len": 64, "doc_stride": 16})]
        return cases
    raise ValueError(head)


QA_REMOVED_NOTE = (
    "question-answering: transformers 5.x removed the pipeline (pipeline('question-answering') raises KeyError "
    "'The task question-answering has been removed from transformers...', REMOVED_TASKS in "
    "transformers/pipelines/__init__.py). Its cases are recorded with transformers 4.46.3's QuestionAnsweringPipeline "
    "(fast-tokenizer path) transcribed in tools/golden/qa_pipeline_446.py, run on the 5.25 tokenizer and model; "
    "the outputs equal the 4.46.3 recordings."
)


def record_pipelines(fam: Family, head: str, model_dir: Path) -> list[dict]:
    from transformers import AutoModelForQuestionAnswering, AutoTokenizer, pipeline

    from qa_pipeline_446 import QuestionAnswering446

    pipes = {}
    out = []
    for task, inputs, kwargs in pipeline_cases(fam, head):
        if task not in pipes:
            if task == "question-answering":
                model = AutoModelForQuestionAnswering.from_pretrained(model_dir)
                pipes[task] = QuestionAnswering446(model, AutoTokenizer.from_pretrained(model_dir))
            else:
                pipes[task] = pipeline(task, model=str(model_dir), tokenizer=str(model_dir), device="cpu")
        common.seed_all(common.SEED)
        if task == "question-answering":
            # {"question", "context"} are keyword arguments (a positional dict is deprecated).
            result = pipes[task](**inputs, **kwargs)
        else:
            result = pipes[task](inputs, **kwargs)
        out.append({"task": task, "inputs": inputs, "kwargs": kwargs, "output": result})
    return out


def make_one(fam: Family, head: str, tokenizer) -> None:
    import transformers

    name = f"tiny-{fam.name}-{head}"
    out_dir = FIXTURES / name
    build_checkpoint(fam, head, out_dir, tokenizer)

    # Re-load from disk: everything recorded below comes from the saved files.
    cls = getattr(transformers, fam.classes[head])
    model = cls.from_pretrained(out_dir).eval()
    tok = transformers.AutoTokenizer.from_pretrained(out_dir)
    assert tok.is_fast

    extra = {"notes": [QA_REMOVED_NOTE]} if head == "qa" else {}
    expected = {
        "meta": common.meta(
            SCRIPT,
            **common.hub_version(),
            checkpoint=name,
            model_class=fam.classes[head],
            tokenizer_class=type(tok).__name__,
            **extra,
        ),
        "model": record_model(model, tok, head),
        "pipelines": record_pipelines(fam, head, out_dir),
    }
    common.write_json(out_dir / "expected.json", expected)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default="", help="comma-separated checkpoint names to (re)build")
    args = ap.parse_args()
    only = {s for s in args.only.split(",") if s}

    common.setup()
    common.require_transformers_5(SCRIPT)
    for fam in FAMILIES:
        with tempfile.TemporaryDirectory() as tmp:
            tokenizer = fam.make_tokenizer(Path(tmp))
            for head in fam.classes:
                name = f"tiny-{fam.name}-{head}"
                if only and name not in only:
                    continue
                print(f"== {name}", file=sys.stderr)
                make_one(fam, head, tokenizer)


if __name__ == "__main__":
    main()
