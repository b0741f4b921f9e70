"""Tokenizer-only checkpoints with chat templates, as transformers 5.x saves and loads them.

Writes (tokenizer files only, no model):

* tests/fixtures/tiny-chat-5x/: the tiny-llama tokenizer (AutoTokenizer on a copy of
  tests/fixtures/tiny-llama/{tokenizer.json,tokenizer_config.json}) with
  `chat_template = {"default": <SmolLM2-Instruct template>, "tool_use": <Llama 3.1
  template>}` (the real templates in tests/fixtures/chat-templates/), saved with
  `save_pretrained(dir)`: 5.x writes chat_template.jinja (the "default" one),
  additional_chat_templates/tool_use.jinja, tokenizer.json and a 5.x
  tokenizer_config.json without a chat_template key. The files are left exactly as
  5.x wrote them; expected.json is added next to them.
* tests/fixtures/tiny-chat-legacy-config/: the same tokenizer saved with
  `save_pretrained(dir, save_jinja_files=False)`: the legacy layout, templates inside
  tokenizer_config.json as a list of {"name", "template"} (what 4.x wrote for several
  templates). Same renders.
* tests/fixtures/tiny-chat-precedence/: the tiny-chat-5x tokenizer files plus
  conflicting template sources (a chat_template key in tokenizer_config.json,
  chat_template.jinja, additional_chat_templates/tool_use.jinja, chat_template.json);
  the small templates there are SYNTHETIC markers that say which file they come from.
  expected.json records what AutoTokenizer.from_pretrained loads.

Every expected render is made by the tokenizer re-loaded with
`AutoTokenizer.from_pretrained(dir)` (and checked equal to the in-memory one).

Pinned: transformers 5.25.0, tokenizers 0.23.3, jinja2 3.1.6
(tools/golden/requirements.txt).

Usage: python tools/golden/make_chat_checkpoints.py
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import jinja2  # noqa: E402
import transformers  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402

SCRIPT = "make_chat_checkpoints.py"
FIX = common.FIXTURES
TEMPLATES = FIX / "chat-templates"
TINY = FIX / "tiny-llama"

DEFAULT_TEMPLATE = "smollm2-instruct.jinja"
TOOL_USE_TEMPLATE = "llama-3.1-instruct.jinja"

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
                    "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                },
                "required": ["location"],
            },
        },
    },
]
USER = [{"role": "user", "content": "Hello, who are you?"}]
MULTI_TURN = [
    {"role": "system", "content": "Be terse."},
    {"role": "user", "content": "2+2?"},
    {"role": "assistant", "content": "4"},
    {"role": "user", "content": "And 3+3?"},
]
TOOL_ROUND_TRIP = [
    {"role": "user", "content": "What's the weather like in Paris?"},
    {"role": "assistant", "tool_calls": [{"type": "function", "function": {
        "name": "get_current_weather", "arguments": {"location": "Paris, France"}}}]},
    {"role": "tool", "content": "22.0"},
]

# (name, messages, tools, chat_template argument, add_generation_prompt, which template 5.x picks)
RENDERS = [
    ("default-user", USER, None, None, True, "default"),
    ("default-multi-turn", MULTI_TURN, None, None, False, "default"),
    ("tools-pick-tool-use", USER, TOOLS, None, True, "tool_use"),
    ("tools-round-trip-pick-tool-use", TOOL_ROUND_TRIP, TOOLS, None, True, "tool_use"),
    ("empty-tools-list-picks-tool-use", USER, [], None, True, "tool_use"),  # `tools is not None`
    ("named-tool-use-without-tools", MULTI_TURN, None, "tool_use", True, "tool_use"),
    ("named-default-with-tools", USER, TOOLS, "default", True, "default"),
    ("literal-template-argument", USER, None, "{{ messages[0]['content'] | upper }}", False, "literal"),
]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def files_of(folder: Path) -> dict:
    return {
        str(p.relative_to(folder)): {"bytes": p.stat().st_size, "sha256": sha256(p)}
        for p in sorted(folder.rglob("*")) if p.is_file() and p.name != "expected.json"
    }


def render_all(tok, ref=None) -> list:
    out = []
    for name, messages, tools, template_arg, agp, picked in RENDERS:
        kw = dict(tools=tools, chat_template=template_arg, add_generation_prompt=agp)
        rendered = tok.apply_chat_template(copy.deepcopy(messages), tokenize=False, **kw)
        enc = tok.apply_chat_template(copy.deepcopy(messages), tokenize=True, return_dict=True, **kw)
        case = {
            "name": name,
            "messages": messages,
            "tools": tools,
            "chat_template": template_arg,
            "add_generation_prompt": agp,
            "selected_template": picked,
            "extra": dict(tok.special_tokens_map),
            "rendered": rendered,
            "input_ids": list(enc["input_ids"]),
            "attention_mask": list(enc["attention_mask"]),
        }
        # the picked template is the one we say it is
        if picked != "literal":
            assert tok.get_chat_template(template_arg, tools) == tok.chat_template[picked], name
        out.append(case)
    if ref is not None:
        assert out == ref, "re-loaded tokenizer renders differently"
    return out


def meta(**extra) -> dict:
    import tokenizers

    return {
        "script": f"tools/golden/{SCRIPT}",
        "transformers": transformers.__version__,
        "tokenizers": tokenizers.__version__,
        "jinja2": jinja2.__version__,
        **extra,
    }


def main() -> int:
    transformers.logging.set_verbosity_error()
    tmp = Path(tempfile.mkdtemp(prefix="chat-ckpt-"))
    src = tmp / "tiny-llama"
    src.mkdir()
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copyfile(TINY / f, src / f)
    source_meta = {
        "tokenizer_source": "tests/fixtures/tiny-llama",
        "tokenizer.json sha256": sha256(src / "tokenizer.json"),
        "tokenizer_config.json sha256": sha256(src / "tokenizer_config.json"),
    }
    templates = {
        "default": (TEMPLATES / DEFAULT_TEMPLATE).read_text(encoding="utf-8"),
        "tool_use": (TEMPLATES / TOOL_USE_TEMPLATE).read_text(encoding="utf-8"),
    }
    template_meta = {
        "default": f"tests/fixtures/chat-templates/{DEFAULT_TEMPLATE}",
        "tool_use": f"tests/fixtures/chat-templates/{TOOL_USE_TEMPLATE}",
    }

    tok = AutoTokenizer.from_pretrained(str(src))
    tok.chat_template = dict(templates)
    in_memory = render_all(tok)

    # --- tiny-chat-5x: save_pretrained as 5.x does by default ---------------------------
    out5 = FIX / "tiny-chat-5x"
    if out5.exists():
        shutil.rmtree(out5)
    written = [str(Path(p).relative_to(out5)) for p in tok.save_pretrained(str(out5))]
    loaded = AutoTokenizer.from_pretrained(str(out5))
    assert loaded.chat_template == templates, "chat templates did not round-trip"
    common.write_json(out5 / "expected.json", {
        "meta": meta(**source_meta, templates=template_meta, notes=[
            "AutoTokenizer.from_pretrained(tiny-llama copy); tokenizer.chat_template = {'default': ..., "
            "'tool_use': ...}; save_pretrained(dir). The files are exactly as 5.x wrote them "
            "(tokenizer_config.json keeps 'is_local'/'local_files_only', which from_pretrained's "
            "kwargs leave in init_kwargs).",
            "renders: AutoTokenizer.from_pretrained(dir).apply_chat_template(messages, tools=..., "
            "chat_template=..., add_generation_prompt=...) with tokenize=False (rendered) and "
            "tokenize=True, return_dict=True (input_ids, attention_mask; the rendered text is "
            "tokenized with add_special_tokens=False).",
            "selected_template: get_chat_template(): a name given as chat_template picks that "
            "template; no name and tools is not None (even []) picks 'tool_use' if present, else "
            "'default'; a chat_template string that is not a name is used as the template itself.",
        ]),
        "save_pretrained_returned": written,
        "files": files_of(out5),
        "loaded": {"chat_template_names": sorted(loaded.chat_template)},
        "renders": render_all(loaded, in_memory),
    })

    # --- tiny-chat-legacy-config: templates inside tokenizer_config.json -----------------
    outl = FIX / "tiny-chat-legacy-config"
    if outl.exists():
        shutil.rmtree(outl)
    written = [str(Path(p).relative_to(outl)) for p in tok.save_pretrained(str(outl), save_jinja_files=False)]
    loaded = AutoTokenizer.from_pretrained(str(outl))
    assert loaded.chat_template == templates
    common.write_json(outl / "expected.json", {
        "meta": meta(**source_meta, templates=template_meta, notes=[
            "as tiny-chat-5x, saved with save_pretrained(dir, save_jinja_files=False): the legacy "
            "layout, tokenizer_config.json['chat_template'] = [{'name': 'default', 'template': ...}, "
            "{'name': 'tool_use', 'template': ...}] (a single template would be a plain string). "
            "No .jinja files. Renders identical to tiny-chat-5x.",
        ]),
        "save_pretrained_returned": written,
        "files": files_of(outl),
        "loaded": {"chat_template_names": sorted(loaded.chat_template)},
        "renders": render_all(loaded, in_memory),
    })

    # --- tiny-chat-precedence: which source wins --------------------------------------
    outp = FIX / "tiny-chat-precedence"
    if outp.exists():
        shutil.rmtree(outp)
    outp.mkdir()
    shutil.copyfile(out5 / "tokenizer.json", outp / "tokenizer.json")
    marker = "{{- 'SYNTHETIC marker template from %s' -}}{%% for m in messages %%}|{{ m['content'] }}{%% endfor %%}"
    cfg = json.loads((out5 / "tokenizer_config.json").read_text(encoding="utf-8"))
    cfg["chat_template"] = [
        {"name": "default", "template": marker % "tokenizer_config.json (default)"},
        {"name": "rag", "template": marker % "tokenizer_config.json (rag)"},
    ]
    (outp / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2, ensure_ascii=False) + "\n",
                                                encoding="utf-8")
    (outp / "chat_template.jinja").write_text(marker % "chat_template.jinja", encoding="utf-8")
    (outp / "additional_chat_templates").mkdir()
    (outp / "additional_chat_templates" / "tool_use.jinja").write_text(
        marker % "additional_chat_templates/tool_use.jinja", encoding="utf-8")
    (outp / "chat_template.json").write_text(
        json.dumps({"chat_template": marker % "chat_template.json"}, indent=2) + "\n", encoding="utf-8")
    loaded = AutoTokenizer.from_pretrained(str(outp))
    loaded_templates = loaded.chat_template
    assert isinstance(loaded_templates, dict)
    renders = []
    for name, template_arg, tools in [("no-tools", None, None), ("tools", None, TOOLS),
                                      ("named-tool-use", "tool_use", None), ("named-rag", "rag", None)]:
        try:
            r = {"rendered": loaded.apply_chat_template(USER, tokenize=False, tools=tools,
                                                        chat_template=template_arg)}
        except (ValueError, jinja2.exceptions.TemplateError) as e:
            r = {"error": f"{type(e).__name__}: {e}"}
        renders.append({"name": name, "messages": USER, "tools": tools, "chat_template": template_arg, **r})
    common.write_json(outp / "expected.json", {
        "meta": meta(notes=[
            "tokenizer.json from tiny-chat-5x; tokenizer_config.json = tiny-chat-5x's plus a legacy "
            "'chat_template' list (default, rag); chat_template.jinja; additional_chat_templates/"
            "tool_use.jinja; chat_template.json ({'chat_template': ...}). All templates are SYNTHETIC "
            "markers naming their file.",
            "AutoTokenizer.from_pretrained: any chat_template.jinja / additional_chat_templates/*.jinja "
            "replaces tokenizer_config.json's chat_template entirely (its 'rag' is gone); "
            "chat_template.json is never read by tokenizers (only ProcessorMixin reads it).",
        ]),
        "files": files_of(outp),
        "loaded_chat_template": loaded_templates,
        "renders": renders,
    })
    for f in ("tokenizer.json", "tokenizer_config.json"):
        if sha256(TINY / f) != source_meta[f"{f} sha256"]:
            print(f"warning: tests/fixtures/tiny-llama/{f} changed while this script ran")
    shutil.rmtree(tmp)
    return 0


if __name__ == "__main__":
    sys.exit(main())
