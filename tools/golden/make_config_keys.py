"""Record the config keys transformers knows per model family, for an "unread config key" test.

For each model_type below this writes tests/fixtures/config-keys/<model_type>.json:

    {
      "meta": {...versions, script},
      "config_class": "LlamaConfig",
      "keys": [sorted keys of ConfigClass().to_dict()],
      "defaults": {key: ConfigClass().to_dict()[key], ...},   # same order as "keys"
      "attribute_map": {alias: key}                           # ConfigClass.attribute_map (e.g. GPT-2's
                                                              # hidden_size -> n_embd); {} when none
    }

`to_dict()` is what save_pretrained serialises (before dropping values equal to the
defaults), so `keys` includes the PreTrainedConfig-wide entries (`architectures`,
`dtype`, `id2label`, `output_attentions`, `_name_or_path`, `transformers_version`, ...)
as well as the family's own fields. Values are plain JSON (id2label's int keys become
strings, as in config.json).

Deterministic: no randomness; running it twice gives byte-identical files.

Usage:  python tools/golden/make_config_keys.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

SCRIPT = "make_config_keys.py"
OUT = common.FIXTURES / "config-keys"

MODEL_TYPES = [
    "llama",
    "mistral",
    "qwen2",
    "qwen3",
    "gemma2",
    "phi3",
    "gpt2",
    "bert",
    "roberta",
    "xlm-roberta",
    "distilbert",
]


def plain(value):
    """A JSON round trip: tuples become lists, dict keys strings; anything else JSON cannot hold fails."""
    return json.loads(json.dumps(value, allow_nan=False))


def record(model_type: str) -> dict:
    import huggingface_hub
    from transformers import CONFIG_MAPPING

    cls = CONFIG_MAPPING[model_type]
    config = cls()
    assert config.model_type == model_type, (config.model_type, model_type)
    as_dict = config.to_dict()
    keys = sorted(as_dict)
    return {
        "meta": common.meta(SCRIPT, huggingface_hub=huggingface_hub.__version__, model_type=model_type),
        "config_class": cls.__name__,
        "keys": keys,
        "defaults": {key: plain(as_dict[key]) for key in keys},
        "attribute_map": dict(sorted(getattr(cls, "attribute_map", {}).items())),
    }


def main() -> None:
    common.setup()
    import transformers

    if common_version(transformers.__version__) < (5, 0):
        sys.exit(f"make_config_keys.py records with transformers 5.x (pinned 5.25.0); this is {transformers.__version__}")
    OUT.mkdir(parents=True, exist_ok=True)
    for model_type in MODEL_TYPES:
        text = json.dumps(record(model_type), indent=1, ensure_ascii=False, allow_nan=False) + "\n"
        path = OUT / f"{model_type}.json"
        path.write_text(text, encoding="utf-8")
        print(f"wrote {path.relative_to(common.REPO_ROOT)} ({len(text.encode()) / 1024:.1f} KiB)", file=sys.stderr)


def common_version(v: str) -> tuple:
    return tuple(int("".join(c for c in part if c.isdigit()) or 0) for part in v.split(".")[:2])


if __name__ == "__main__":
    main()
