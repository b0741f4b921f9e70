"""Golden chat-template renderings: real templates through transformers' own machinery.

For each template in tests/fixtures/chat-templates/*.jinja (exact copies of the
official ones, see SOURCES.md), build a PreTrainedTokenizerFast from
tests/fixtures/tiny-llama with that `chat_template` and the model family's special
tokens, and render a set of conversations with
`tokenizer.apply_chat_template(messages, tokenize=False, ...)`. The variables the
template sees besides messages/tools/documents/add_generation_prompt
(`tokenizer.special_tokens_map` plus any extra keyword) are recorded as `extra`, so
the Rust test passes exactly the same ones. A rendering that raises records the
error text instead.

Pinned: transformers 4.46.3, jinja2 3.1.6 (tools/golden/requirements.txt).
Writes tests/fixtures/chat-templates/expected.json.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
DIR = REPO_ROOT / "tests" / "fixtures" / "chat-templates"
TOKENIZER = REPO_ROOT / "tests" / "fixtures" / "tiny-llama" / "tokenizer.json"

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import jinja2  # noqa: E402
import transformers  # noqa: E402
from transformers import PreTrainedTokenizerFast  # noqa: E402

# template file stem -> special tokens of that model family (as in its tokenizer_config.json)
FAMILIES = {
    "llama-3.1-instruct": {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"},
    "llama-3.2-instruct": {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"},
    "qwen2.5-instruct": {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"},
    "gemma-2-it": {"bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>", "unk_token": "<unk>"},
    "mistral-nemo-instruct-2407": {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"},
    "phi-3-mini-instruct": {"bos_token": "<s>", "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>", "unk_token": "<unk>"},
}
TOOL_TEMPLATES = {"llama-3.1-instruct", "llama-3.2-instruct", "qwen2.5-instruct", "mistral-nemo-instruct-2407"}

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


def cases():
    """(name, template, messages, add_generation_prompt, tools, documents, kwargs)."""
    out = []
    for t in FAMILIES:
        extra = {"date_string": "26 Jul 2024"} if t == "llama-3.2-instruct" else {}
        out += [
            (f"{t}/user", t, USER, True, None, None, extra),
            (f"{t}/user-no-generation-prompt", t, USER, False, None, None, extra),
            (f"{t}/system-user", t, SYSTEM_USER, True, None, None, extra),
            (f"{t}/multi-turn", t, MULTI_TURN, True, None, None, extra),
            (f"{t}/multi-turn-no-generation-prompt", t, MULTI_TURN, False, None, None, extra),
            (f"{t}/system-multi-turn", t, SYSTEM_MULTI_TURN, False, None, None, extra),
            (f"{t}/not-alternating", t, NOT_ALTERNATING, True, None, None, extra),
        ]
        if t in TOOL_TEMPLATES:
            out += [
                (f"{t}/tools-ask", t, TOOL_ASK, True, TOOLS, None, extra),
                (f"{t}/tools-round-trip", t, TOOL_ROUND_TRIP, True, TOOLS, None, extra),
                (f"{t}/tools-round-trip-system", t, TOOL_ROUND_TRIP_SYSTEM, False, TOOLS, None, extra),
                (f"{t}/tool-result-dict", t, TOOL_RESULT_DICT, True, TOOLS, None, extra),
                (f"{t}/two-tool-calls", t, TWO_TOOL_CALLS, False, TOOLS, None, extra),
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
        ("phi-3-mini-instruct/documents-ignored", "phi-3-mini-instruct", USER, True, None,
         [{"title": "Doc", "text": "Body"}], {}),
    ]
    return out


def main() -> int:
    transformers.logging.set_verbosity_error()
    results = []
    tokenizers = {}
    for name, t, messages, agp, tools, documents, kwargs in cases():
        if t not in tokenizers:
            source = (DIR / f"{t}.jinja").read_text(encoding="utf-8")
            tokenizers[t] = PreTrainedTokenizerFast(
                tokenizer_file=str(TOKENIZER), chat_template=source, **FAMILIES[t]
            )
        tok = tokenizers[t]
        extra = {**tok.special_tokens_map, **kwargs}
        case = {
            "name": name,
            "template": f"{t}.jinja",
            "messages": messages,
            "add_generation_prompt": agp,
            "tools": tools,
            "documents": documents,
            "extra": extra,
        }
        try:
            case["rendered"] = tok.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=agp, tools=tools, documents=documents, **kwargs
            )
        except jinja2.exceptions.TemplateError as e:
            case["error"] = str(e)
        results.append(case)

    out = {
        "meta": {
            "script": "tools/golden/make_chat_templates.py",
            "transformers": transformers.__version__,
            "jinja2": jinja2.__version__,
        },
        "cases": results,
    }
    path = DIR / "expected.json"
    path.write_text(json.dumps(out, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    n_err = sum("error" in c for c in results)
    print(f"wrote {path.relative_to(REPO_ROOT)}: {len(results)} cases ({n_err} errors)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
