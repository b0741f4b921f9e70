"""Golden chat-template renderings: real templates through transformers' own machinery.

For each template in tests/fixtures/chat-templates/*.jinja (exact copies of the
official ones, see SOURCES.md; one synthetic template, named as such), build a
tokenizer from the tiny-llama tokenizer.json with that `chat_template` and the model
family's special tokens, and record what `tokenizer.apply_chat_template` gives.

Sections of tests/fixtures/chat-templates/expected.json:

* `cases`: `apply_chat_template(messages, tokenize=False, add_generation_prompt=...,
  tools=..., documents=..., **kwargs)`. The variables the template sees besides
  messages/tools/documents/add_generation_prompt (`tokenizer.special_tokens_map` plus
  any extra keyword) are recorded as `extra`. `messages` is what the template saw:
  5.x drops every message key whose value is None and copies a message's reasoning
  to both `reasoning_content` and `thinking`; where that changed the input,
  `messages_passed` holds the messages as passed. A rendering that raises a
  TemplateError records the error text instead.
* `undefined_errors`: cases that fail with jinja2's UndefinedError (Jinja's own
  message, not a template's raise_exception text), same layout as `cases`.
* `continue_final_message`: the same with `continue_final_message=True` (or a field
  name), add_generation_prompt false: `rendered_with_tag` is the raw render with
  "CONTINUE_FINAL_MESSAGE_TAG " appended to the continued field, `rendered` what
  5.x returns (cut at the tag). Errors (ValueError or TemplateError) are recorded
  with their class name.
* `tokenized`: `apply_chat_template(..., tokenize=True, return_dict=True,
  return_assistant_tokens_mask=...)` with the tiny-llama tokenizer itself (a copy of
  tests/fixtures/tiny-llama/{tokenizer.json,tokenizer_config.json}, sha256 in meta):
  `input_ids`, `attention_mask`, `assistant_masks`, plus the rendered text, whether
  `input_ids == tokenizer(rendered, add_special_tokens=False).input_ids`, and what
  `tokenizer(rendered, add_special_tokens=True)` would have given.

Pinned: transformers 5.25.0, tokenizers 0.23.3, jinja2 3.1.6
(tools/golden/requirements.txt). Offline.

Usage: python tools/golden/make_chat_templates.py [--tokenizer-dir DIR]
(DIR defaults to tests/fixtures/tiny-llama; it must hold tokenizer.json and
tokenizer_config.json, which are copied to a temporary folder first).
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import os
import platform
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

REPO_ROOT = common.REPO_ROOT
DIR = REPO_ROOT / "tests" / "fixtures" / "chat-templates"
TINY = REPO_ROOT / "tests" / "fixtures" / "tiny-llama"

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import jinja2  # noqa: E402
import tokenizers  # noqa: E402
import transformers  # noqa: E402
from transformers import AutoTokenizer, PreTrainedTokenizerFast  # noqa: E402
from transformers.utils.chat_template_utils import (  # noqa: E402
    _alias_reasoning_fields,
    _normalize_chat_messages,
)

CONTINUE_TAG = "CONTINUE_FINAL_MESSAGE_TAG "  # transformers/utils/chat_template_utils.py

# template file stem -> special tokens of that model family (as in its tokenizer_config.json)
FAMILIES = {
    "llama-3.1-instruct": {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"},
    "llama-3.2-instruct": {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"},
    "qwen2.5-instruct": {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"},
    "gemma-2-it": {"bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>", "unk_token": "<unk>"},
    "mistral-nemo-instruct-2407": {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"},
    "phi-3-mini-instruct": {"bos_token": "<s>", "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>", "unk_token": "<unk>"},
    "qwen3": {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"},
    "smollm2-instruct": {"bos_token": "<|im_start|>", "eos_token": "<|im_end|>", "pad_token": "<|im_end|>", "unk_token": "<|endoftext|>"},
    "smollm3-3b-unsloth": {"eos_token": "<|im_end|>", "pad_token": "<|im_end|>"},
    "mistral-small-3.2-24b-instruct-2506": {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"},
    "synthetic-chatml-generation": {"eos_token": "<|im_end|>"},
}
TOOL_TEMPLATES = {
    "llama-3.1-instruct", "llama-3.2-instruct", "qwen2.5-instruct", "mistral-nemo-instruct-2407",
    "qwen3", "mistral-small-3.2-24b-instruct-2506",
}
# Templates that read strftime_now() for a default system prompt: every conversation
# gets a system message so the renderings do not depend on the day.
NEEDS_SYSTEM = {"mistral-small-3.2-24b-instruct-2506"}
# Templates with {% generation %} blocks (return_assistant_tokens_mask)
GENERATION_TEMPLATES = {"synthetic-chatml-generation"}

USER = [{"role": "user", "content": "Hello, who are you?"}]
SYSTEM_USER = [
    {"role": "system", "content": "You are a helpful assistant. Answer briefly."},
    {"role": "user", "content": "What is the capital of France?"},
]
MULTI_TURN = [
    {"role": "user", "content": "Hi there!"},
    {"role": "assistant", "content": "  Hello! How can I help you today?  "},
    {"role": "user", "content": "Tell me a joke about café owners — with «unicode»."},
]
SYSTEM_MULTI_TURN = [
    {"role": "system", "content": "Be terse."},
    {"role": "user", "content": "2+2?"},
    {"role": "assistant", "content": "4"},
    {"role": "user", "content": "And 3+3?"},
]
NOT_ALTERNATING = [
    {"role": "user", "content": "one"},
    {"role": "user", "content": "two"},
]
SYSTEM_FOR_DATED = {"role": "system", "content": "You are a concise assistant."}

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_current_weather",
            "description": "Get the current weather in a given location",
            "parameters": {
                "type": "object",
                "properties": {
                    "location": {"type": "string", "description": "The city and country, e.g. Paris, France"},
                    "unit": {"type": "string", "enum": ["celsius", "fahrenheit"], "description": "Temperature unit"},
                },
                "required": ["location"],
            },
            "return": {"type": "number", "description": "The temperature"},
        },
    },
    {
        "type": "function",
        "function": {
            "name": "get_time",
            "description": "Current time in a timezone",
            "parameters": {"type": "object", "properties": {"tz": {"type": "string"}}, "required": ["tz"]},
        },
    },
]
TOOL_CALL = {
    "id": "abc123DEF",
    "type": "function",
    "function": {"name": "get_current_weather", "arguments": {"location": "Paris, France", "unit": "celsius"}},
}
TOOL_ASK = [{"role": "user", "content": "What's the weather like in Paris?"}]
TOOL_ROUND_TRIP = [
    {"role": "user", "content": "What's the weather like in Paris?"},
    {"role": "assistant", "content": None, "tool_calls": [TOOL_CALL]},
    {"role": "tool", "tool_call_id": "abc123DEF", "name": "get_current_weather", "content": "22.0"},
]
TOOL_ROUND_TRIP_SYSTEM = [{"role": "system", "content": "You can check the weather."}] + TOOL_ROUND_TRIP + [
    {"role": "assistant", "content": "It is 22 °C in Paris."},
    {"role": "user", "content": "Thanks! And in Lyon?"},
]
TOOL_RESULT_DICT = [
    {"role": "user", "content": "Weather in Paris?"},
    {"role": "assistant", "content": None, "tool_calls": [TOOL_CALL]},
    {"role": "tool", "tool_call_id": "abc123DEF", "name": "get_current_weather",
     "content": {"temperature": 22.0, "unit": "celsius", "sky": ["clear", "sunny"]}},
]
TWO_TOOL_CALLS = [
    {"role": "user", "content": "Weather and time in Paris?"},
    {"role": "assistant", "content": None, "tool_calls": [
        TOOL_CALL,
        {"id": "xyz789GHI", "type": "function", "function": {"name": "get_time", "arguments": {"tz": "Europe/Paris"}}},
    ]},
]
QWEN_STRING_ARGS = [
    {"role": "user", "content": "Weather in Paris?"},
    {"role": "assistant", "content": "Let me check.", "tool_calls": [
        {"id": "abc123DEF", "type": "function",
         "function": {"name": "get_current_weather", "arguments": "{\"location\": \"Paris, France\"}"}},
    ]},
    {"role": "tool", "tool_call_id": "abc123DEF", "content": "22"},
    {"role": "tool", "tool_call_id": "abc123DEF", "content": "sunny"},
]
DOCUMENTS = [{"title": "Doc", "text": "Body"}]

# Qwen3 thinking: reasoning kept only after the last real user query
QWEN3_THINK_HISTORY = [
    {"role": "user", "content": "2+2?"},
    {"role": "assistant", "content": "<think>\nSimple sum.\n</think>\n\n4"},
    {"role": "user", "content": "And 3+3?"},
]
QWEN3_THINK_LAST = [
    {"role": "user", "content": "2+2?"},
    {"role": "assistant", "content": "<think>\nSimple sum.\n</think>\n\n4"},
]
QWEN3_REASONING_FIELD = [
    {"role": "user", "content": "2+2?"},
    {"role": "assistant", "content": "4", "reasoning_content": "\nAdd two and two.\n"},
    {"role": "user", "content": "And 3+3?"},
    {"role": "assistant", "content": "6", "reasoning_content": "Add three and three."},
]
QWEN3_REASONING_ALIAS = [  # 5.x copies "reasoning" / "thinking" into reasoning_content
    {"role": "user", "content": "2+2?"},
    {"role": "assistant", "content": "4", "reasoning": "Add two and two."},
]
QWEN3_AGENT = [  # multi-step: the tool turn after the last user query keeps its reasoning
    {"role": "system", "content": "You are Qwen."},
    {"role": "user", "content": "Weather in Paris?"},
    {"role": "assistant", "content": "", "reasoning_content": "I should call the tool.", "tool_calls": [TOOL_CALL]},
    {"role": "tool", "tool_call_id": "abc123DEF", "content": "22.0"},
    {"role": "assistant", "content": "It is 22 °C.", "reasoning_content": "The tool said 22."},
]
QWEN3_TOOL_RESPONSE_AS_USER = [  # a user message that *is* a tool response does not count as a query
    {"role": "user", "content": "Weather in Paris?"},
    {"role": "assistant", "content": "<think>\nCall it.\n</think>\n\nChecking."},
    {"role": "user", "content": "<tool_response>\n22.0\n</tool_response>"},
]
QWEN3_TOOL_CALL_CONTENT_NONE = [  # content None is dropped by 5.x; the template then concatenates Undefined
    {"role": "user", "content": "Weather in Paris?"},
    {"role": "assistant", "content": None, "tool_calls": [TOOL_CALL]},
]


def with_system(t: str, messages: list) -> list:
    if t == "qwen3":
        # Qwen3's template reads message.content of tool-call turns; 5.x drops content=None, so the
        # shared tool conversations use "" there (qwen3/tool-call-content-none records the None case)
        messages = [{**m, "content": ""} if m.get("content", "") is None else m for m in messages]
    if t in NEEDS_SYSTEM and (not messages or messages[0]["role"] != "system"):
        return [SYSTEM_FOR_DATED] + messages
    return messages


def cases():
    """(name, template, messages, add_generation_prompt, tools, documents, kwargs)."""
    out = []
    # no {% generation %} template here: `cases` stays renderable without that tag; the
    # synthetic template is in `continue_final_message` and `tokenized`
    for t in [t for t in FAMILIES if t not in GENERATION_TEMPLATES]:
        extra = {"date_string": "26 Jul 2024"} if t == "llama-3.2-instruct" else {}
        s = lambda m: with_system(t, m)  # noqa: E731
        out += [
            (f"{t}/user", t, s(USER), True, None, None, extra),
            (f"{t}/user-no-generation-prompt", t, s(USER), False, None, None, extra),
            (f"{t}/system-user", t, SYSTEM_USER, True, None, None, extra),
            (f"{t}/multi-turn", t, s(MULTI_TURN), True, None, None, extra),
            (f"{t}/multi-turn-no-generation-prompt", t, s(MULTI_TURN), False, None, None, extra),
            (f"{t}/system-multi-turn", t, SYSTEM_MULTI_TURN, False, None, None, extra),
            (f"{t}/not-alternating", t, s(NOT_ALTERNATING), True, None, None, extra),
        ]
        if t in TOOL_TEMPLATES:
            out += [
                (f"{t}/tools-ask", t, s(TOOL_ASK), True, TOOLS, None, extra),
                (f"{t}/tools-round-trip", t, s(TOOL_ROUND_TRIP), True, TOOLS, None, extra),
                (f"{t}/tools-round-trip-system", t, s(TOOL_ROUND_TRIP_SYSTEM), False, TOOLS, None, extra),
                (f"{t}/tool-result-dict", t, s(TOOL_RESULT_DICT), True, TOOLS, None, extra),
                (f"{t}/two-tool-calls", t, s(TWO_TOOL_CALLS), False, TOOLS, None, extra),
            ]
    out += [
        ("llama-3.1-instruct/tools-in-system", "llama-3.1-instruct", TOOL_ROUND_TRIP, True, TOOLS, None,
         {"tools_in_user_message": False}),
        ("llama-3.1-instruct/builtin-tools", "llama-3.1-instruct", SYSTEM_USER, True, None, None,
         {"builtin_tools": ["brave_search", "wolfram_alpha", "code_interpreter"]}),
        ("llama-3.1-instruct/builtin-tool-call", "llama-3.1-instruct", [
            {"role": "user", "content": "Search the news."},
            {"role": "assistant", "tool_calls": [{"type": "function", "function": {
                "name": "brave_search", "arguments": {"query": "news today"}}}]},
            {"role": "ipython", "content": "Nothing happened."},
        ], True, None, None, {"builtin_tools": ["brave_search"]}),
        ("llama-3.1-instruct/custom-date", "llama-3.1-instruct", SYSTEM_USER, True, None, None,
         {"date_string": "01 Jan 2025"}),
        ("llama-3.1-instruct/tools-without-user", "llama-3.1-instruct",
         [{"role": "system", "content": "x"}], True, TOOLS, None, {}),
        ("qwen2.5-instruct/tools-string-arguments", "qwen2.5-instruct", QWEN_STRING_ARGS, True, TOOLS, None, {}),
        ("qwen2.5-instruct/tools-with-system", "qwen2.5-instruct", [
            {"role": "system", "content": "You are Qwen."}] + TOOL_ASK, True, TOOLS, None, {}),
        ("mistral-nemo-instruct-2407/bad-tool-call-id", "mistral-nemo-instruct-2407", [
            {"role": "user", "content": "Weather?"},
            {"role": "assistant", "tool_calls": [{"id": "short", "type": "function",
                                                   "function": {"name": "get_time", "arguments": {"tz": "UTC"}}}]},
        ], False, TOOLS, None, {}),
        ("mistral-nemo-instruct-2407/unknown-role", "mistral-nemo-instruct-2407", [
            {"role": "user", "content": "a"}, {"role": "narrator", "content": "b"}], False, None, None, {}),
        ("phi-3-mini-instruct/documents-ignored", "phi-3-mini-instruct", USER, True, None, DOCUMENTS, {}),
        # Qwen3: tools, <think> handling, enable_thinking
        ("qwen3/tools-string-arguments", "qwen3", QWEN_STRING_ARGS, True, TOOLS, None, {}),
        ("qwen3/tools-with-system", "qwen3", [{"role": "system", "content": "You are Qwen."}] + TOOL_ASK,
         True, TOOLS, None, {}),
        ("qwen3/enable-thinking-false", "qwen3", SYSTEM_USER, True, None, None, {"enable_thinking": False}),
        ("qwen3/enable-thinking-true", "qwen3", SYSTEM_USER, True, None, None, {"enable_thinking": True}),
        ("qwen3/think-in-history", "qwen3", QWEN3_THINK_HISTORY, True, None, None, {}),
        ("qwen3/think-in-last-turn", "qwen3", QWEN3_THINK_LAST, False, None, None, {}),
        ("qwen3/reasoning-content-field", "qwen3", QWEN3_REASONING_FIELD, False, None, None, {}),
        ("qwen3/reasoning-alias", "qwen3", QWEN3_REASONING_ALIAS, False, None, None, {}),
        ("qwen3/agent-multi-step", "qwen3", QWEN3_AGENT, False, TOOLS, None, {}),
        ("qwen3/tool-response-as-user", "qwen3", QWEN3_TOOL_RESPONSE_AS_USER, True, None, None, {}),
        ("qwen3/documents-ignored", "qwen3", USER, True, None, DOCUMENTS, {}),
        # SmolLM3 (Unsloth's edit): reasoning modes
        ("smollm3-3b-unsloth/enable-thinking-false", "smollm3-3b-unsloth", SYSTEM_MULTI_TURN, True, None, None,
         {"enable_thinking": False}),
        ("smollm3-3b-unsloth/system-no-think", "smollm3-3b-unsloth", [
            {"role": "system", "content": "Be terse. /no_think"}] + SYSTEM_MULTI_TURN[1:], True, None, None, {}),
        ("smollm3-3b-unsloth/system-think-overrides", "smollm3-3b-unsloth", [
            {"role": "system", "content": "/think  "}, {"role": "user", "content": "2+2?"}], True, None, None,
         {"enable_thinking": False}),
        ("smollm3-3b-unsloth/assistant-leading-newlines", "smollm3-3b-unsloth", [
            {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "\n\nHello."},
            {"role": "tool", "content": "tool output"}], False, None, None, {}),
        ("smollm3-3b-unsloth/tools-ignored", "smollm3-3b-unsloth", TOOL_ASK, True, TOOLS, None, {}),
        # SmolLM2: default system prompt
        ("smollm2-instruct/documents-ignored", "smollm2-instruct", USER, True, None, DOCUMENTS, {}),
        # Mistral Small 3.2
        ("mistral-small-3.2-24b-instruct-2506/bad-tool-call-id", "mistral-small-3.2-24b-instruct-2506", [
            SYSTEM_FOR_DATED, {"role": "user", "content": "Weather?"},
            {"role": "assistant", "tool_calls": [{"id": "short", "type": "function",
                                                   "function": {"name": "get_time", "arguments": {"tz": "UTC"}}}]},
        ], False, TOOLS, None, {}),
        ("mistral-small-3.2-24b-instruct-2506/content-blocks", "mistral-small-3.2-24b-instruct-2506", [
            {"role": "system", "content": [{"type": "text", "text": "Block system."}]},
            {"role": "user", "content": [{"type": "text", "text": "Describe "}, {"type": "image"},
                                         {"type": "text", "text": " please."}]},
            {"role": "assistant", "content": [{"type": "text", "text": "A cat."}]},
        ], False, None, None, {}),
        ("mistral-small-3.2-24b-instruct-2506/unknown-role", "mistral-small-3.2-24b-instruct-2506", [
            SYSTEM_FOR_DATED, {"role": "user", "content": "a"}, {"role": "narrator", "content": "b"}],
         False, None, None, {}),
    ]
    return out


# (name, template, messages, continue_final_message, kwargs)
def continue_cases():
    partial = [
        {"role": "user", "content": "What is the capital of France?"},
        {"role": "assistant", "content": "The capital of France is"},
    ]
    partial_space = [
        {"role": "user", "content": "What is the capital of France?"},
        {"role": "assistant", "content": "The capital of France is "},
    ]
    out = []
    for t in FAMILIES:
        extra = {"date_string": "26 Jul 2024"} if t == "llama-3.2-instruct" else {}
        out += [
            (f"{t}/continue-assistant", t, with_system(t, partial), True, extra),
            (f"{t}/continue-assistant-trailing-space", t, with_system(t, partial_space), True, extra),
        ]
    out += [
        ("qwen2.5-instruct/continue-user", "qwen2.5-instruct",
         [{"role": "user", "content": "Complete this sentence: the sky is"}], True, {}),
        ("qwen3/continue-reasoning-content", "qwen3", [
            {"role": "user", "content": "2+2?"},
            {"role": "assistant", "content": "", "reasoning_content": "Two plus two"},
        ], "reasoning_content", {}),
        ("qwen3/continue-after-think", "qwen3", [
            {"role": "user", "content": "2+2?"},
            {"role": "assistant", "content": "<think>\nEasy.\n</think>\n\nThe answer is"},
        ], True, {}),
        ("qwen3/continue-enable-thinking-false", "qwen3", partial, True, {"enable_thinking": False}),
        ("llama-3.1-instruct/continue-missing-field", "llama-3.1-instruct", partial, "reasoning_content", {}),
        # the template drops the content of a tool-call turn, so the tag never shows up
        ("mistral-small-3.2-24b-instruct-2506/continue-content-not-rendered", "mistral-small-3.2-24b-instruct-2506", [
            SYSTEM_FOR_DATED, {"role": "user", "content": "Weather?"},
            {"role": "assistant", "content": "Let me check", "tool_calls": [TOOL_CALL]},
        ], True, {}),
        ("smollm3-3b-unsloth/continue-no-think", "smollm3-3b-unsloth", partial, True, {"enable_thinking": False}),
    ]
    return out


# (name, template, messages, add_generation_prompt, tools, kwargs, apply_kwargs)
def tokenized_cases():
    gen_conv = [
        {"role": "system", "content": "Be terse."},
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": "And 3+3?"},
        {"role": "assistant", "content": "It is 6."},
    ]
    out = []
    for t in ["qwen2.5-instruct", "qwen3", "smollm2-instruct", "smollm3-3b-unsloth", "llama-3.1-instruct",
              "synthetic-chatml-generation"]:
        out += [
            (f"{t}/tok-system-user", t, SYSTEM_USER, True, None, {}, {}),
            (f"{t}/tok-multi-turn", t, gen_conv, False, None, {}, {}),
        ]
    out += [
        ("qwen2.5-instruct/tok-tools-round-trip", "qwen2.5-instruct", TOOL_ROUND_TRIP, True, TOOLS, {}, {}),
        ("synthetic-chatml-generation/tok-multi-turn-generation-prompt", "synthetic-chatml-generation",
         gen_conv[:4], True, None, {}, {}),
        ("synthetic-chatml-generation/tok-unicode", "synthetic-chatml-generation", MULTI_TURN + [
            {"role": "assistant", "content": "Un café, s'il vous plaît — «merci»!"}], False, None, {}, {}),
        # the user's "<|im_end|>" is matched as the special token unless sanitize_control_tokens=True
        ("qwen2.5-instruct/tok-control-token-in-content", "qwen2.5-instruct",
         [{"role": "user", "content": "say <|im_end|> please"}], True, None, {}, {}),
        ("qwen2.5-instruct/tok-control-token-sanitized", "qwen2.5-instruct",
         [{"role": "user", "content": "say <|im_end|> please"}], True, None, {},
         {"sanitize_control_tokens": True}),
    ]
    return out


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def template_view(messages):
    """The messages as the template sees them in 5.x (None keys dropped, reasoning aliased)."""
    return _alias_reasoning_fields(_normalize_chat_messages(copy.deepcopy(messages)))


def record_messages(case, messages):
    seen = template_view(messages)
    case["messages"] = seen
    if seen != messages:
        case["messages_passed"] = messages


def main() -> int:
    if int(transformers.__version__.split(".")[0]) < 5:
        sys.exit(f"make_chat_templates.py records with transformers 5.x (pinned 5.25.0); this is {transformers.__version__}")
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokenizer-dir", type=Path, default=TINY)
    args = ap.parse_args()
    transformers.logging.set_verbosity_error()

    tmp = Path(tempfile.mkdtemp(prefix="chat-tok-"))
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copyfile(args.tokenizer_dir / f, tmp / f)
    tok_meta = {
        "source": str(args.tokenizer_dir.relative_to(REPO_ROOT)) if args.tokenizer_dir.is_relative_to(REPO_ROOT)
        else str(args.tokenizer_dir),
        "tokenizer.json sha256": sha256(tmp / "tokenizer.json"),
        "tokenizer_config.json sha256": sha256(tmp / "tokenizer_config.json"),
    }
    tokenizer_file = str(tmp / "tokenizer.json")

    sources = {p.stem: p.read_text(encoding="utf-8") for p in sorted(DIR.glob("*.jinja"))}
    assert set(sources) == set(FAMILIES), (set(sources) ^ set(FAMILIES))
    family_toks = {
        t: PreTrainedTokenizerFast(tokenizer_file=tokenizer_file, chat_template=sources[t], **FAMILIES[t])
        for t in FAMILIES
    }

    # --- cases: tokenize=False --------------------------------------------------------
    results = []
    undefined = []
    for name, t, messages, agp, tools, documents, kwargs in cases() + [
        ("qwen3/tool-call-content-none", "qwen3", QWEN3_TOOL_CALL_CONTENT_NONE, False, TOOLS, None, {}),
    ]:
        tok = family_toks[t]
        case = {"name": name, "template": f"{t}.jinja"}
        record_messages(case, messages)
        case.update({
            "add_generation_prompt": agp,
            "tools": tools,
            "documents": documents,
            "extra": {**tok.special_tokens_map, **kwargs},
        })
        try:
            case["rendered"] = tok.apply_chat_template(
                copy.deepcopy(messages), tokenize=False, add_generation_prompt=agp, tools=tools,
                documents=documents, **kwargs
            )
        except jinja2.exceptions.UndefinedError as e:
            # not raise_exception(): the text is Jinja's own, kept out of `cases`
            case["error"] = str(e)
            case["error_type"] = type(e).__name__
            undefined.append(case)
            continue
        except jinja2.exceptions.TemplateError as e:
            case["error"] = str(e)
            case["error_type"] = type(e).__name__
        results.append(case)

    # --- continue_final_message ------------------------------------------------------
    continued = []
    for name, t, messages, cfm, kwargs in continue_cases():
        tok = family_toks[t]
        case = {"name": name, "template": f"{t}.jinja"}
        record_messages(case, messages)
        case.update({
            "continue_final_message": cfm,
            "add_generation_prompt": False,
            "tools": None,
            "documents": None,
            "extra": {**tok.special_tokens_map, **kwargs},
        })
        # what the template renders once 5.x has appended the tag to the continued field(s)
        field = cfm if isinstance(cfm, str) else "content"
        tagged = template_view(messages)
        fields = [field]
        if field in ("reasoning_content", "thinking", "reasoning"):
            fields = [f for f in ("reasoning_content", "thinking", "reasoning")
                      if tagged[-1].get(f) is not None and tagged[-1].get(f) == tagged[-1].get(field)]
        if tagged[-1].get(field) is not None and isinstance(tagged[-1][field], str):
            for f in fields:
                tagged[-1][f] = tagged[-1][f] + CONTINUE_TAG
            try:
                case["rendered_with_tag"] = tok.apply_chat_template(
                    tagged, tokenize=False, add_generation_prompt=False, **kwargs)
            except jinja2.exceptions.TemplateError as e:
                case["rendered_with_tag_error"] = str(e)
        try:
            case["rendered"] = tok.apply_chat_template(
                copy.deepcopy(messages), tokenize=False, continue_final_message=cfm, **kwargs)
        except (jinja2.exceptions.TemplateError, ValueError) as e:
            case["error"] = f"{type(e).__name__}: {e}"
        continued.append(case)
    # continue_final_message together with add_generation_prompt is refused before rendering
    tok = family_toks["qwen2.5-instruct"]
    try:
        tok.apply_chat_template([{"role": "user", "content": "x"}], tokenize=False,
                                continue_final_message=True, add_generation_prompt=True)
        raise AssertionError("expected ValueError")
    except ValueError as e:
        continued.append({
            "name": "qwen2.5-instruct/continue-with-generation-prompt", "template": "qwen2.5-instruct.jinja",
            "messages": [{"role": "user", "content": "x"}], "continue_final_message": True,
            "add_generation_prompt": True, "tools": None, "documents": None,
            "extra": dict(tok.special_tokens_map), "error": f"ValueError: {e}",
        })

    # --- tokenized: the tiny-llama tokenizer itself ------------------------------------
    tiny = AutoTokenizer.from_pretrained(str(tmp))
    tokenized = []
    for name, t, messages, agp, tools, kwargs, apply_kwargs in tokenized_cases():
        mask = t in GENERATION_TEMPLATES
        case = {"name": name, "template": f"{t}.jinja"}
        record_messages(case, messages)
        case.update({
            "add_generation_prompt": agp,
            "tools": tools,
            "documents": None,
            "extra": {**tiny.special_tokens_map, **kwargs},
            "apply_kwargs": {"tokenize": True, "return_dict": True, "return_assistant_tokens_mask": mask,
                             **apply_kwargs},
        })
        rendered = tiny.apply_chat_template(copy.deepcopy(messages), chat_template=sources[t], tokenize=False,
                                            add_generation_prompt=agp, tools=tools, **kwargs)
        out = tiny.apply_chat_template(copy.deepcopy(messages), chat_template=sources[t], tokenize=True,
                                       return_dict=True, return_assistant_tokens_mask=mask,
                                       add_generation_prompt=agp, tools=tools, **apply_kwargs, **kwargs)
        case["rendered"] = rendered
        case["input_ids"] = list(out["input_ids"])
        case["attention_mask"] = list(out["attention_mask"])
        if mask:
            case["assistant_masks"] = list(out["assistant_masks"])
            case["assistant_text"] = tiny.decode(
                [i for i, m in zip(out["input_ids"], out["assistant_masks"]) if m])
        case["output_keys"] = sorted(out.keys())
        # how 5.x tokenizes the rendered chat: tokenizer(rendered, add_special_tokens=False)
        case["input_ids_equal_add_special_tokens_false"] = (
            case["input_ids"] == tiny(rendered, add_special_tokens=False)["input_ids"])
        case["ids_add_special_tokens_true"] = tiny(rendered, add_special_tokens=True)["input_ids"]
        case["tokens"] = tiny.convert_ids_to_tokens(case["input_ids"])
        tokenized.append(case)
    # batched: a list of conversations, padded (tiny-llama pads on the left)
    convs = [SYSTEM_USER, SYSTEM_MULTI_TURN + [{"role": "assistant", "content": "6"}]]
    out = tiny.apply_chat_template(copy.deepcopy(convs), chat_template=sources["synthetic-chatml-generation"],
                                   tokenize=True, return_dict=True, return_assistant_tokens_mask=True,
                                   padding=True, add_generation_prompt=False)
    tokenized.append({
        "name": "synthetic-chatml-generation/tok-batch-padded", "template": "synthetic-chatml-generation.jinja",
        "messages": convs, "batched": True, "add_generation_prompt": False, "tools": None, "documents": None,
        "extra": dict(tiny.special_tokens_map),
        "apply_kwargs": {"tokenize": True, "return_dict": True, "return_assistant_tokens_mask": True,
                         "padding": True},
        "padding_side": tiny.padding_side,
        "rendered": tiny.apply_chat_template(copy.deepcopy(convs),
                                             chat_template=sources["synthetic-chatml-generation"],
                                             tokenize=False),
        "input_ids": [list(x) for x in out["input_ids"]],
        "attention_mask": [list(x) for x in out["attention_mask"]],
        "assistant_masks": [list(x) for x in out["assistant_masks"]],
        "output_keys": sorted(out.keys()),
    })

    out = {
        "meta": {
            "script": "tools/golden/make_chat_templates.py",
            "transformers": transformers.__version__,
            "tokenizers": tokenizers.__version__,
            "jinja2": jinja2.__version__,
            "python": platform.python_version(),
            "tokenizer": tok_meta,
            "template_sha256": {f"{t}.jinja": hashlib.sha256(sources[t].encode()).hexdigest() for t in sources},
            "notes": [
                "cases: apply_chat_template(messages, tokenize=False, ...) with a PreTrainedTokenizerFast "
                "(TokenizersBackend in 5.x) over the tiny-llama tokenizer.json and the family's special "
                "tokens; extra = tokenizer.special_tokens_map + the case's keyword arguments.",
                "messages = what the template saw: 5.x drops message keys whose value is None and copies "
                "reasoning/thinking/reasoning_content into both reasoning_content and thinking; "
                "messages_passed = the input where that changed it.",
                "continue_final_message: rendered_with_tag = the render after appending "
                f"{CONTINUE_TAG!r} to the continued field; rendered = that cut at the tag's last "
                "occurrence (rstripped when the template trimmed the space after the tag).",
                "error_type: TemplateError = the template's raise_exception(); undefined_errors: cases "
                "that fail on an undefined value (UndefinedError, Jinja's own message).",
                "tokenized: the tiny-llama tokenizer itself (AutoTokenizer on a copy); apply_chat_template "
                "tokenizes the rendered text with add_special_tokens=False.",
            ],
        },
        "cases": results,
        "undefined_errors": undefined,
        "continue_final_message": continued,
        "tokenized": tokenized,
    }
    path = DIR / "expected.json"
    common.write_json(path, out)  # lists of scalars on one line
    n_err = sum("error" in c for c in results)
    print(f"wrote {path.relative_to(REPO_ROOT)}: {len(results)} cases ({n_err} errors), "
          f"{len(continued)} continue_final_message, {len(tokenized)} tokenized")
    for f in ("tokenizer.json", "tokenizer_config.json"):
        if (args.tokenizer_dir / f).exists() and sha256(args.tokenizer_dir / f) != tok_meta[f"{f} sha256"]:
            print(f"warning: {args.tokenizer_dir / f} changed while this script ran")
    shutil.rmtree(tmp)
    return 0


if __name__ == "__main__":
    sys.exit(main())
