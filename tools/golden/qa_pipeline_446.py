"""transformers 4.46.3's extractive question-answering pipeline, for fast tokenizers.

transformers 5.x removed the `question-answering` pipeline (`pipeline("question-answering")`
raises KeyError: "The task question-answering has been removed from transformers. Use the
`text-generation` pipeline with a chat model instead."; `transformers/pipelines/__init__.py`,
`REMOVED_TASKS`, and `pipelines/question_answering.py` is gone). rustformers keeps its
question-answering pipeline, so make_encoders.py records what 4.46.3's
`QuestionAnsweringPipeline` computes, run on the 5.25 tokenizer and model: this file is that
pipeline's fast-tokenizer path (`preprocess`, `_forward`, `postprocess`, `select_starts_ends`,
`decode_spans`, `get_indices`), transcribed from transformers 4.46.3
(src/transformers/pipelines/question_answering.py, Apache-2.0, (c) the Hugging Face team)
with the same numpy / torch operations and dtypes, without the slow-tokenizer (SQuAD
features) and TensorFlow branches. Its outputs on the tiny checkpoints equal the 4.46.3
recordings exactly (make_encoders.py checks them against `QA_446_CHECK`).

Usage:  QuestionAnswering446(model, tokenizer)(question=..., context=..., **kwargs)
"""

from __future__ import annotations

import inspect

import numpy as np
import torch


def decode_spans(start, end, topk, max_answer_len, undesired_tokens):
    """4.46.3 `decode_spans`: the top-k (start, end) spans by start_prob * end_prob."""
    if start.ndim == 1:
        start = start[None]
    if end.ndim == 1:
        end = end[None]
    outer = np.matmul(np.expand_dims(start, -1), np.expand_dims(end, 1))
    # Remove candidates with end < start and end - start > max_answer_len
    candidates = np.tril(np.triu(outer), max_answer_len - 1)
    scores_flat = candidates.flatten()
    if topk == 1:
        idx_sort = [np.argmax(scores_flat)]
    elif len(scores_flat) < topk:
        idx_sort = np.argsort(-scores_flat)
    else:
        idx = np.argpartition(-scores_flat, topk)[0:topk]
        idx_sort = idx[np.argsort(-scores_flat[idx])]
    starts, ends = np.unravel_index(idx_sort, candidates.shape)[1:]
    desired_spans = np.isin(starts, undesired_tokens.nonzero()) & np.isin(ends, undesired_tokens.nonzero())
    starts = starts[desired_spans]
    ends = ends[desired_spans]
    scores = candidates[0, starts, ends]
    return starts, ends, scores


def select_starts_ends(start, end, p_mask, attention_mask, min_null_score=1000000, top_k=1,
                       handle_impossible_answer=False, max_answer_len=15):
    """4.46.3 `select_starts_ends`: mask non-context tokens, softmax, null score, decode_spans."""
    undesired_tokens = np.abs(np.array(p_mask) - 1)
    if attention_mask is not None:
        undesired_tokens = undesired_tokens & attention_mask
    undesired_tokens_mask = undesired_tokens == 0.0
    start = np.where(undesired_tokens_mask, -10000.0, start)
    end = np.where(undesired_tokens_mask, -10000.0, end)
    start = np.exp(start - start.max(axis=-1, keepdims=True))
    start = start / start.sum()
    end = np.exp(end - end.max(axis=-1, keepdims=True))
    end = end / end.sum()
    if handle_impossible_answer:
        min_null_score = min(min_null_score, (start[0, 0] * end[0, 0]).item())
    # Mask CLS
    start[0, 0] = end[0, 0] = 0.0
    starts, ends, scores = decode_spans(start, end, top_k, max_answer_len, undesired_tokens)
    return starts, ends, scores, min_null_score


class QuestionAnswering446:
    """`pipeline("question-answering")` of transformers 4.46.3 (fast tokenizers, PyTorch, batch size 1)."""

    def __init__(self, model, tokenizer):
        assert tokenizer.is_fast
        self.model = model.eval()
        self.tokenizer = tokenizer

    def __call__(self, question: str, context: str, padding="do_not_pad", top_k=None, doc_stride=None,
                 max_answer_len=None, max_seq_len=None, max_question_len=64, handle_impossible_answer=None,
                 align_to_words=None):
        # _sanitize_parameters
        if top_k is not None and top_k < 1:
            raise ValueError(f"top_k parameter should be >= 1 (got {top_k})")
        if max_answer_len is not None and max_answer_len < 1:
            raise ValueError(f"max_answer_len parameter should be >= 1 (got {max_answer_len}")
        post = {}
        for key, value in [("top_k", top_k), ("max_answer_len", max_answer_len),
                           ("handle_impossible_answer", handle_impossible_answer),
                           ("align_to_words", align_to_words)]:
            if value is not None:
                post[key] = value
        outputs = [self._forward(f) for f in self.preprocess(question, context, padding, doc_stride, max_seq_len)]
        return self.postprocess(outputs, context, **post)

    def preprocess(self, question, context, padding="do_not_pad", doc_stride=None, max_seq_len=None):
        tok = self.tokenizer
        if max_seq_len is None:
            max_seq_len = min(tok.model_max_length, 384)
        if doc_stride is None:
            doc_stride = min(max_seq_len // 2, 128)
        if doc_stride > max_seq_len:
            raise ValueError(f"`doc_stride` ({doc_stride}) is larger than `max_seq_len` ({max_seq_len})")
        question_first = tok.padding_side == "right"
        encoded = tok(
            text=question if question_first else context,
            text_pair=context if question_first else question,
            padding=padding,
            truncation="only_second" if question_first else "only_first",
            max_length=max_seq_len,
            stride=doc_stride,
            return_token_type_ids=True,
            return_overflowing_tokens=True,
            return_offsets_mapping=True,
            return_special_tokens_mask=True,
        )
        num_spans = len(encoded["input_ids"])
        # 1 for tokens that cannot be in the answer (question, specials), 0 for context tokens
        p_mask = [
            [t != 1 if question_first else 0 for t in encoded.sequence_ids(span_id)]
            for span_id in range(num_spans)
        ]
        features = []
        for i in range(num_spans):
            input_ids = encoded["input_ids"][i]
            # keep the cls_token unmasked (some models use it to indicate unanswerable questions)
            if tok.cls_token_id is not None:
                for cls_index in np.nonzero(np.array(input_ids) == tok.cls_token_id)[0]:
                    p_mask[i][cls_index] = 0
            feature = {
                "input_ids": input_ids,
                "attention_mask": encoded["attention_mask"][i] if "attention_mask" in encoded else None,
                "token_type_ids": encoded["token_type_ids"][i] if "token_type_ids" in encoded else None,
                "p_mask": p_mask[i],
            }
            fw_args = {}
            model_input_names = tok.model_input_names + ["p_mask", "token_type_ids"]
            for k, v in feature.items():
                if k in model_input_names:
                    tensor = torch.tensor(v)
                    if tensor.dtype == torch.int32:
                        tensor = tensor.long()
                    fw_args[k] = tensor.unsqueeze(0)
            features.append({"encoding": encoded[i], **fw_args})
        return features

    @torch.no_grad()
    def _forward(self, inputs):
        model_inputs = {k: inputs[k] for k in self.tokenizer.model_input_names}
        if "use_cache" in inspect.signature(self.model.forward).parameters.keys():
            model_inputs["use_cache"] = False
        output = self.model(**model_inputs)
        return {"start": output["start_logits"], "end": output["end_logits"], **inputs}

    def postprocess(self, model_outputs, context, top_k=1, handle_impossible_answer=False, max_answer_len=15,
                    align_to_words=True):
        tok = self.tokenizer
        min_null_score = 1000000  # large and positive
        answers = []
        for output in model_outputs:
            attention_mask = output["attention_mask"].numpy() if output.get("attention_mask") is not None else None
            starts, ends, scores, min_null_score = select_starts_ends(
                output["start"], output["end"], output["p_mask"], attention_mask, min_null_score, top_k,
                handle_impossible_answer, max_answer_len,
            )
            question_first = bool(tok.padding_side == "right")
            enc = output["encoding"]
            if tok.padding_side == "left":
                offset = (output["input_ids"] == tok.pad_token_id).numpy().sum()
            else:
                offset = 0
            sequence_index = 1 if question_first else 0
            for s, e, score in zip(starts, ends, scores):
                s = s - offset
                e = e - offset
                start_index, end_index = self.get_indices(enc, s, e, sequence_index, align_to_words)
                answers.append(
                    {"score": score.item(), "start": start_index, "end": end_index,
                     "answer": context[start_index:end_index]}
                )
        if handle_impossible_answer:
            answers.append({"score": min_null_score, "start": 0, "end": 0, "answer": ""})
        answers = sorted(answers, key=lambda x: x["score"], reverse=True)[:top_k]
        if len(answers) == 1:
            return answers[0]
        return answers

    @staticmethod
    def get_indices(enc, s, e, sequence_index, align_to_words):
        if align_to_words:
            try:
                start_word = enc.token_to_word(s)
                end_word = enc.token_to_word(e)
                start_index = enc.word_to_chars(start_word, sequence_index=sequence_index)[0]
                end_index = enc.word_to_chars(end_word, sequence_index=sequence_index)[1]
            except Exception:
                # Some tokenizers don't really handle words. Keep to offsets then.
                start_index = enc.offsets[s][0]
                end_index = enc.offsets[e][1]
        else:
            start_index = enc.offsets[s][0]
            end_index = enc.offsets[e][1]
        return start_index, end_index
