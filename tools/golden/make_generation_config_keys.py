"""Record the generation_config.json keys transformers 5.x knows, for an "unread key" test.

Writes tests/fixtures/config-keys/generation_config.json (next to make_config_keys.py's
per-model files):

    {
      "meta": {...versions, script},
      "keys": [sorted keys of GenerationConfig().to_dict()],
      "defaults": {key: GenerationConfig().to_dict()[key]},      # same order as "keys"
      "runtime_defaults": GenerationConfig._get_default_generation_params(),
      "saved_when_default": json.loads(GenerationConfig().to_json_string(use_diff=True)),
      "custom_key_round_trip": {"input", "to_diff_dict"}
    }

In 5.x every field of a fresh GenerationConfig is None (`defaults`); the values
generate() falls back to are `runtime_defaults`, applied by generate() only to fields
still None after the model's generation_config (GenerationConfig.update(...,
defaults_only=True)); kwargs passed to generate() override both. A key
GenerationConfig does not know is kept as an attribute and saved back
(`custom_key_round_trip`).

Deterministic. Usage: python tools/golden/make_generation_config_keys.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

SCRIPT = "make_generation_config_keys.py"
OUT = common.FIXTURES / "config-keys" / "generation_config.json"


def plain(value):
    """A JSON round trip: tuples become lists, dict keys strings; anything else JSON cannot hold fails."""
    return json.loads(json.dumps(value, allow_nan=False))


def main() -> None:
    common.setup()
    import huggingface_hub
    import transformers
    from transformers import GenerationConfig

    if int(transformers.__version__.split(".")[0]) < 5:
        sys.exit(f"{SCRIPT} records with transformers 5.x (pinned 5.25.0); this is {transformers.__version__}")
    as_dict = GenerationConfig().to_dict()
    keys = sorted(as_dict)
    custom_input = {"max_new_tokens": 5, "eos_token_id": [2, 4], "my_custom_key": 1}
    out = {
        "meta": common.meta(SCRIPT, huggingface_hub=huggingface_hub.__version__, notes=[
            "defaults: GenerationConfig().to_dict() (5.x leaves every field None).",
            "runtime_defaults: GenerationConfig._get_default_generation_params(), which generate() applies "
            "to the fields still None after the model's generation_config (update(..., defaults_only=True)); "
            "generate(**kwargs) overrides both.",
            "saved_when_default: what save_pretrained writes for a default config (to_json_string(use_diff=True)).",
            "custom_key_round_trip: GenerationConfig.from_dict(input).to_diff_dict(): unknown keys are kept.",
        ]),
        "keys": keys,
        "defaults": {key: plain(as_dict[key]) for key in keys},
        "runtime_defaults": plain(GenerationConfig._get_default_generation_params()),
        "saved_when_default": json.loads(GenerationConfig().to_json_string(use_diff=True)),
        "custom_key_round_trip": {
            "input": custom_input,
            "to_diff_dict": plain(GenerationConfig.from_dict(dict(custom_input)).to_diff_dict()),
        },
    }
    text = json.dumps(out, indent=1, ensure_ascii=False, allow_nan=False) + "\n"
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(text, encoding="utf-8")
    print(f"wrote {OUT.relative_to(common.REPO_ROOT)} ({len(text.encode()) / 1024:.1f} KiB)", file=sys.stderr)


if __name__ == "__main__":
    main()
