"""Golden outputs of transformers' text-generation pipeline on the tiny decoders.

Writes tests/fixtures/text-generation/expected.json:

    {
      "meta": {...versions, script, notes},
      "stop_string": str,                # the stop string of the stop-string cases (see below)
      "cases": [
        {"name": str,
         "model": "tiny-llama" | "tiny-qwen2",      # folder under tests/fixtures/
         "chat_template_file": str,                  # only where the folder's chat_template.jinja
                                                     # was replaced (path from the repo root)
         "inputs": str | [str] | chat | [chat],      # chat: [{"role", "content"}]
         "kwargs": {...},                            # passed to the pipeline call
         "output": ...,                              # exactly what the pipeline returned
         "prompt_ids": [int] | [[int]],              # what generate() got, one list per prompt
         "new_ids": [int] | [[int]],                 # the tokens generate() added, per prompt
         "padded_input_ids": [[int]],                # batch_size > 1 only: the padded batch
         "attention_mask": [[int]]}                  #   generate() got, and its mask
      ]
    }

`output = pipeline("text-generation", model=DIR, tokenizer=DIR)(inputs, **kwargs)`,
JSON-converted. Every case passes `do_sample=False` (greedy): the tiny folders'
generation_config.json has no do_sample, and the pipeline's own default is sampling
(do_sample True, temperature 0.7). `prompt_ids` / `new_ids` come from a wrapper around
the model's `generate` that records its `input_ids` and what it returned (one call per
prompt with the default batch_size 1; one padded call for batch_size 2, where
`prompt_ids` are the rows without their left padding and `new_ids` the generated part of
each row, eos / pad included).

The stop-string cases pass a string that the greedy continuation of the first case
really contains (asserted): once with the pipeline's `stop_sequence` argument, once
as generate's own `stop_strings=[...]` with `tokenizer=` the pipeline's tokenizer (in
`kwargs` recorded as the string "<pipeline tokenizer>"), and once (`stop_sequence`) a
prefix of it that ends inside a token: generation stops after that token and the text
is not cut at the stop string.

The tools case copies tests/fixtures/tiny-llama to a temporary folder and replaces
its chat_template.jinja with tests/fixtures/chat-templates/qwen2.5-instruct.jinja.

Pinned: transformers 5.25.0 (tools/golden/requirements.txt). Deterministic, offline,
CPU, float32, one thread. Usage: python tools/golden/make_text_generation.py
"""

from __future__ import annotations

import copy
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

SCRIPT = "make_text_generation.py"
OUT = common.FIXTURES / "text-generation" / "expected.json"
TOOLS_TEMPLATE = common.FIXTURES / "chat-templates" / "qwen2.5-instruct.jinja"
TOKENIZER_PLACEHOLDER = "<pipeline tokenizer>"

PROMPT = common.DECODER_PROMPTS[0]  # "John lives in Paris and works for Google. The weather is nice today."
BATCH = list(common.DECODER_PROMPTS)  # two prompts of different lengths
SYSTEM = {"role": "system", "content": "You are a helpful assistant."}
CHAT = [SYSTEM, {"role": "user", "content": "Hello world!"}]
# Short enough that the prompt and 8 new tokens fit the tiny models' 64 positions (even
# with a second assistant turn opened after it).
PREFILL_CHAT = [
    {"role": "user", "content": "Capital of France?"},
    {"role": "assistant", "content": "It is"},
]
# tiny-qwen2 answers this chat with four tokens, then <|im_end|> (id 4, an eos of its
# generation_config): generation stops before max_new_tokens.
EOS_CHAT = [SYSTEM, {"role": "user", "content": "Hot men through where that!"}]
# Greedy continuations that hold special tokens which are NOT eos for the model:
# tiny-llama emits <|im_start|> (id 3) as its 5th new token; skip_special_tokens drops it.
SPECIAL_PROMPT = "Example their does went for?"
# tiny-qwen2 emits <|im_end|> (id 4, eos) as its 5th new token.
EOS_PROMPT = "Go how."
STOP_STRING = "wet"  # in tiny-llama's greedy continuation of PROMPT (asserted below)
# Its first two characters: the continuation's tokens are "w", "et", so the token that
# completes "we" overhangs it; generation still stops there and the text keeps "wet".
STOP_STRING_OVERHANG = "we"
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Get the weather in a city.",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string", "description": "The city."}},
                "required": ["city"],
            },
        },
    }
]
TOOLS_CHAT = [SYSTEM, {"role": "user", "content": "What is the weather in Paris?"}]

GREEDY = {"do_sample": False}


def case_specs() -> list[dict]:
    """(name, model, inputs, kwargs) of every case, in file order."""
    specs = []
    for model in ("tiny-llama", "tiny-qwen2"):
        m = model.removeprefix("tiny-")
        specs += [
            # 1. a plain prompt
            dict(name=f"{m}-prompt", model=model, inputs=PROMPT, kwargs={**GREEDY, "max_new_tokens": 8}),
            dict(name=f"{m}-prompt-new-text", model=model, inputs=PROMPT,
                 kwargs={**GREEDY, "max_new_tokens": 8, "return_full_text": False}),
            dict(name=f"{m}-prompt-tensors", model=model, inputs=PROMPT,
                 kwargs={**GREEDY, "max_new_tokens": 8, "return_tensors": True}),
            # 2. a chat (add_generation_prompt)
            dict(name=f"{m}-chat", model=model, inputs=CHAT, kwargs={**GREEDY, "max_new_tokens": 8}),
            dict(name=f"{m}-chat-new-text", model=model, inputs=CHAT,
                 kwargs={**GREEDY, "max_new_tokens": 8, "return_full_text": False}),
            # 3. a chat ending in an assistant message (prefill)
            dict(name=f"{m}-prefill", model=model, inputs=PREFILL_CHAT, kwargs={**GREEDY, "max_new_tokens": 8}),
            dict(name=f"{m}-prefill-new-text", model=model, inputs=PREFILL_CHAT,
                 kwargs={**GREEDY, "max_new_tokens": 8, "return_full_text": False}),
            dict(name=f"{m}-prefill-no-continue", model=model, inputs=PREFILL_CHAT,
                 kwargs={**GREEDY, "max_new_tokens": 8, "continue_final_message": False}),
            # 4. two prompts in one call
            dict(name=f"{m}-batch", model=model, inputs=BATCH, kwargs={**GREEDY, "max_new_tokens": 6}),
            dict(name=f"{m}-batch-size-2", model=model, inputs=BATCH,
                 kwargs={**GREEDY, "max_new_tokens": 6, "batch_size": 2}),
        ]
    specs += [
        # special tokens in the continuation
        dict(name="llama-special-token", model="tiny-llama", inputs=SPECIAL_PROMPT,
             kwargs={**GREEDY, "max_new_tokens": 8}),
        dict(name="llama-special-token-kept", model="tiny-llama", inputs=SPECIAL_PROMPT,
             kwargs={**GREEDY, "max_new_tokens": 8, "skip_special_tokens": False}),
        dict(name="qwen2-eos", model="tiny-qwen2", inputs=EOS_PROMPT, kwargs={**GREEDY, "max_new_tokens": 8}),
        dict(name="qwen2-eos-tensors", model="tiny-qwen2", inputs=EOS_PROMPT,
             kwargs={**GREEDY, "max_new_tokens": 8, "return_tensors": True}),
        dict(name="qwen2-chat-eos", model="tiny-qwen2", inputs=EOS_CHAT, kwargs={**GREEDY, "max_new_tokens": 8}),
        dict(name="qwen2-chat-eos-kept", model="tiny-qwen2", inputs=EOS_CHAT,
             kwargs={**GREEDY, "max_new_tokens": 8, "skip_special_tokens": False}),
        # 5. tools (a pipeline argument in 5.x, passed to apply_chat_template)
        dict(name="llama-tools", model="tiny-llama", inputs=TOOLS_CHAT, template=TOOLS_TEMPLATE,
             kwargs={**GREEDY, "max_new_tokens": 8, "tools": TOOLS}),
        # 6. stop strings
        dict(name="llama-stop-sequence", model="tiny-llama", inputs=PROMPT,
             kwargs={**GREEDY, "max_new_tokens": 8, "stop_sequence": STOP_STRING}),
        dict(name="llama-stop-strings", model="tiny-llama", inputs=PROMPT,
             kwargs={**GREEDY, "max_new_tokens": 8, "stop_strings": [STOP_STRING], "tokenizer": TOKENIZER_PLACEHOLDER}),
        dict(name="llama-stop-sequence-overhang", model="tiny-llama", inputs=PROMPT,
             kwargs={**GREEDY, "max_new_tokens": 8, "stop_sequence": STOP_STRING_OVERHANG}),
    ]
    return specs


class GenerateRecorder:
    """Wraps model.generate: records each call's input_ids, attention_mask and output ids."""

    def __init__(self, model):
        self.model = model
        self.inner = model.generate
        self.calls: list[dict] = []
        model.generate = self

    def __call__(self, *args, **kwargs):
        out = self.inner(*args, **kwargs)
        seq = out.sequences if hasattr(out, "sequences") else out
        ids = kwargs["input_ids"]
        mask = kwargs.get("attention_mask")
        self.calls.append({
            "input_ids": ids.tolist(),
            "attention_mask": None if mask is None else mask.tolist(),
            "sequences": seq.tolist(),
        })
        return out


def run_case(pipe, recorder: GenerateRecorder, spec: dict) -> dict:
    kwargs = dict(spec["kwargs"])
    if kwargs.get("tokenizer") == TOKENIZER_PLACEHOLDER:
        kwargs["tokenizer"] = pipe.tokenizer
    recorder.calls.clear()
    output = pipe(copy.deepcopy(spec["inputs"]), **kwargs)
    case = {"name": spec["name"], "model": spec["model"]}
    if "template" in spec:
        case["chat_template_file"] = str(spec["template"].relative_to(common.REPO_ROOT))
    case["inputs"] = spec["inputs"]
    case["kwargs"] = spec["kwargs"]
    case["output"] = output

    prompt_ids, new_ids = [], []
    for call in recorder.calls:
        mask = call["attention_mask"] or [[1] * len(r) for r in call["input_ids"]]
        width = len(call["input_ids"][0])
        for row, mrow, seq in zip(call["input_ids"], mask, call["sequences"]):
            prompt_ids.append([t for t, m in zip(row, mrow) if m])
            new_ids.append(seq[width:])
    batched = isinstance(spec["inputs"], list) and isinstance(spec["inputs"][0], (str, list))
    case["prompt_ids"] = prompt_ids if batched else prompt_ids[0]
    case["new_ids"] = new_ids if batched else new_ids[0]
    assert len(prompt_ids) == (len(spec["inputs"]) if batched else 1), spec["name"]
    if kwargs.get("batch_size", 1) > 1:
        assert len(recorder.calls) == 1, spec["name"]
        case["padded_input_ids"] = recorder.calls[0]["input_ids"]
        case["attention_mask"] = recorder.calls[0]["attention_mask"]
    return case


def check(cases: list[dict], pipes: dict) -> None:
    """Sanity checks of the recorded cases (the choices above still hold)."""
    by = {c["name"]: c for c in cases}
    tok = pipes["tiny-llama"].tokenizer
    # the stop string occurs in the unconstrained continuation, and stops generation early
    new_text = by["llama-prompt-new-text"]["output"][0]["generated_text"]
    assert STOP_STRING in new_text, (STOP_STRING, new_text)
    for name in ("llama-stop-sequence", "llama-stop-strings", "llama-stop-sequence-overhang"):
        assert len(by[name]["new_ids"]) < 8, name
        assert by[name]["output"] == by["llama-stop-sequence"]["output"], name
    # the special-token and eos cases still exercise what they are meant to
    assert 3 in by["llama-special-token"]["new_ids"], by["llama-special-token"]["new_ids"]
    for name in ("qwen2-eos", "qwen2-chat-eos"):
        ids = by[name]["new_ids"]
        assert ids[-1] == 4 and len(ids) < 8, (name, ids)
    # prompt ids: tokenizer(prompt) (BOS added) for strings, apply_chat_template for chats
    assert by["llama-prompt"]["prompt_ids"] == tok(PROMPT).input_ids
    assert by["llama-chat"]["prompt_ids"] == tok.apply_chat_template(CHAT, add_generation_prompt=True, tokenize=True,
                                                                      return_dict=True)["input_ids"]
    # the full output of a prompt is prompt + decode(new ids)
    full = by["llama-prompt"]["output"][0]["generated_text"]
    assert full == PROMPT + tok.decode(by["llama-prompt"]["new_ids"], skip_special_tokens=True), full


def main() -> None:
    common.setup()
    import huggingface_hub
    import jinja2
    import transformers
    from transformers import pipeline

    common.require_transformers_5(SCRIPT)
    specs = case_specs()
    pipes, recorders = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        tools_dir = Path(tmp) / "tiny-llama-qwen2.5-template"
        shutil.copytree(common.FIXTURES / "tiny-llama", tools_dir)
        shutil.copyfile(TOOLS_TEMPLATE, tools_dir / "chat_template.jinja")
        cases = []
        for spec in specs:
            key = (spec["model"], spec.get("template"))
            if key not in pipes:
                d = tools_dir if spec.get("template") else common.FIXTURES / spec["model"]
                common.seed_all(common.SEED)
                pipes[key] = pipeline("text-generation", model=str(d), tokenizer=str(d))
                recorders[key] = GenerateRecorder(pipes[key].model)
            cases.append(run_case(pipes[key], recorders[key], spec))
            print(f"  {spec['name']}: {len(cases[-1]['new_ids'])} new", file=sys.stderr)
    check(cases, {m: p for (m, t), p in pipes.items() if t is None})

    out = {
        "meta": common.meta(
            SCRIPT,
            huggingface_hub=huggingface_hub.__version__,
            jinja2=jinja2.__version__,
            pipeline_class=type(pipes[("tiny-llama", None)]).__name__,
            notes=[
                "output = pipeline('text-generation', model=DIR, tokenizer=DIR)(inputs, **kwargs), "
                "DIR = tests/fixtures/<model> (or its copy with chat_template_file as chat_template.jinja).",
                "Every case is greedy (do_sample False); the pipeline's own default would sample "
                "(do_sample True, temperature 0.7, max_new_tokens 256) since the folders' generation_config "
                "sets none of them.",
                "String prompts are tokenized with tokenizer(prompt) (add_special_tokens default: BOS added); "
                "chats with apply_chat_template(add_generation_prompt=not continue_final_message, "
                "continue_final_message=...), which adds no BOS. continue_final_message defaults to "
                "messages[-1].role == 'assistant'.",
                "Text = tokenizer.decode(new ids, skip_special_tokens=True unless passed, "
                "clean_up_tokenization_spaces=None, i.e. the tokenizer's false); return_full_text (default) "
                "prepends the prompt string to it, or for a chat appends {'role': 'assistant', 'content': text} "
                "to the messages (continued final message: text appended to its content). "
                "return_full_text False gives the bare string, for chats too. return_tensors True gives "
                "generated_token_ids = prompt ids + new ids (eos included).",
                "prompt_ids / new_ids: recorded from the model's generate() calls; new_ids include the eos "
                "that ended generation (with batch_size 2 a row that ended early would be followed by pads, 0; "
                "no row here does).",
                f"kwargs 'tokenizer': '{TOKENIZER_PLACEHOLDER}' stands for the pipeline's own tokenizer object.",
                "stop_sequence s is generate(stop_strings=[s], tokenizer=pipeline tokenizer); generation stops "
                "after the token that completes s, even where that token runs past the end of s, and the text "
                "is not cut at s.",
                "continue_final_message False on a chat ending in an assistant message: the template gets "
                "add_generation_prompt True (the prefill is closed with <|im_end|> and a new assistant turn "
                "opened) and the reply is a second assistant message.",
                "llama-tools: the qwen2.5-instruct template renders the tool schema into the system turn; its "
                f"prompt is {{tools_len}} tokens, past tiny-llama's max_position_embeddings (64) and the "
                "tokenizer's model_max_length (128): 5.25 only warns (tokenizer and generate) and runs it "
                "untruncated (RoPE is computed for any position).",
            ],
        ),
        "stop_string": STOP_STRING,
        "cases": cases,
    }
    tools_len = len(next(c for c in cases if c["name"] == "llama-tools")["prompt_ids"])
    out["meta"]["notes"] = [n.replace("{tools_len}", str(tools_len)) for n in out["meta"]["notes"]]
    common.write_json(OUT, out)


if __name__ == "__main__":
    main()
