"""The peers' side of the side-by-side benchmark: the same work items as
`rustformers bench WORK`, run through PyTorch + transformers / sentence-transformers and
through llama.cpp (llama-cpp-python), at 2 threads.

    python scripts/bench/peers.py WORK [--runs N]
    python scripts/bench/peers.py --list

Prints one JSON object per line, the same shape as `rustformers bench`:
    {"work": ..., "unit": "sentences/s" | "tokens/s" | "s" | "MB",
     "median": x, "min": x, "max": x, "runs": n, "peer": ..., ...}
The load-* items print two objects: time to first token ("s") and peak RSS ("MB").
One untimed warm-up precedes the timed runs. Inputs come from sentences.txt and
prompts.json beside this file; the models from the local Hugging Face cache (seeded by
scripts/fetch-test-models.sh), never from the network.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

THREADS = 2
# Before torch / tokenizers / llama.cpp are imported: every pool at 2 threads.
for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "RAYON_NUM_THREADS"):
    os.environ.setdefault(var, str(THREADS))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")

HERE = Path(__file__).resolve().parent
MINILM = "sentence-transformers/all-MiniLM-L6-v2"
SMOL_REPO = "HuggingFaceTB/SmolLM2-135M-Instruct-GGUF"
SMOL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
BATCH = 32
NEW_TOKENS = 128
N_CTX = 1024


# ---------------------------------------------------------------------------
# Inputs and models
# ---------------------------------------------------------------------------

def sentences() -> list[str]:
    lines = (HERE / "sentences.txt").read_text().splitlines()
    assert len(lines) == 256, len(lines)
    return lines


def prompts() -> dict:
    return json.loads((HERE / "prompts.json").read_text())


def minilm_dir() -> str:
    from huggingface_hub import snapshot_download

    return snapshot_download(MINILM, local_files_only=True)


def smol_gguf() -> str:
    from huggingface_hub import hf_hub_download

    return hf_hub_download(SMOL_REPO, SMOL_FILE, local_files_only=True)


def no_extra_buffers() -> None:
    """llama.cpp's repacked/AMX buffers crash on CPUs where the kernel has not granted AMX
    to the thread (llama.cpp never asks): load with the plain CPU buffers
    (as tools/golden/make_smollm2_llamacpp.py does)."""
    import llama_cpp.llama_cpp as low

    if getattr(low.llama_model_default_params, "_rustformers_patched", False):
        return
    default = low.llama_model_default_params

    def params():
        p = default()
        p.use_extra_bufts = False
        return p

    params._rustformers_patched = True
    low.llama_model_default_params = params


def last_argmax(llm) -> int:
    """Greedy pick from the last evaluated position's logits, read in place from the
    context (llama-cpp-python only fills llm.scores when logits_all=True)."""
    import numpy as np

    logits = np.ctypeslib.as_array(llm._ctx.get_logits_ith(-1), shape=(llm.n_vocab(),))
    return int(np.argmax(logits))


def llama(n_ctx: int = N_CTX, **kw):
    no_extra_buffers()
    import llama_cpp

    return llama_cpp.Llama(
        model_path=smol_gguf(), n_ctx=n_ctx, n_batch=512, n_ubatch=512, n_threads=THREADS,
        n_threads_batch=THREADS, seed=0, verbose=False, **kw,
    )


# ---------------------------------------------------------------------------
# Reporting
# ---------------------------------------------------------------------------

def emit(work: str, unit: str, values: list[float], **extra) -> None:
    out = {
        "work": work, "unit": unit,
        "median": statistics.median(values), "min": min(values), "max": max(values),
        "runs": len(values), "threads": THREADS,
    }
    out.update(extra)
    print(json.dumps(out), flush=True)


def timed(fn, runs: int) -> list[float]:
    """One warm-up call, then `runs` timed calls; fn returns its own seconds (or None to be
    timed whole)."""
    fn()
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        inner = fn()
        out.append(inner if inner is not None else time.perf_counter() - t0)
    return out


def versions(*names: str) -> dict:
    from importlib.metadata import version

    return {n: version(n) for n in names}


# ---------------------------------------------------------------------------
# Work items
# ---------------------------------------------------------------------------

def embeddings(work: str, runs: int) -> None:
    import torch
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(THREADS)
    texts = sentences()
    model = SentenceTransformer(minilm_dir(), device="cpu")
    model.eval()
    reference = None
    if work == "embeddings-bf16":
        reference = model.encode(texts, batch_size=BATCH, normalize_embeddings=True,
                                 convert_to_tensor=True)
        model.to(torch.bfloat16)

    result = {}

    def run():
        # encode: tokenization, forward, mean pooling (the model's 1_Pooling config),
        # then L2 normalization; batches of 32 (sentence-transformers sorts by length).
        with torch.inference_mode():
            result["emb"] = model.encode(texts, batch_size=BATCH, normalize_embeddings=True,
                                         convert_to_tensor=True)

    secs = timed(run, runs)
    extra = {}
    if reference is not None:
        cos = (result["emb"].float() * reference).sum(-1)
        extra["cosine_min_vs_f32"] = float(cos.min())
    emit(work, "sentences/s", [len(texts) / s for s in secs],
         peer=f"pytorch-{work.rsplit('-', 1)[1]} (sentence-transformers)",
         sentences=len(texts), batch=BATCH, dim=int(result["emb"].shape[-1]),
         versions=versions("torch", "transformers", "sentence-transformers"), **extra)


def decode_gguf(work: str, runs: int) -> None:
    import llama_cpp

    llm = llama()
    prompt = prompts()["decode"]
    new_ids: list[int] = []

    def run():
        llm.reset()
        llm.eval(prompt)                       # prompt evaluation: not timed
        t = last_argmax(llm)
        new_ids.clear()
        t0 = time.perf_counter()
        for i in range(NEW_TOKENS):
            new_ids.append(t)
            if i + 1 == NEW_TOKENS:
                break
            llm.eval([t])
            t = last_argmax(llm)
        return time.perf_counter() - t0

    secs = timed(run, runs)
    # 128 new tokens = 127 single-token evaluations after the one the prompt produced;
    # rate = decode steps / time (greedy continues through <|im_end|>).
    emit(work, "tokens/s", [(NEW_TOKENS - 1) / s for s in secs],
         peer="llama.cpp (llama-cpp-python, use_extra_bufts=False)",
         prompt_tokens=len(prompt), new_tokens=NEW_TOKENS, new_ids_head=new_ids[:16],
         versions={"llama-cpp-python": llama_cpp.__version__})


def prefill_gguf(work: str, runs: int) -> None:
    import llama_cpp

    llm = llama()
    ids = prompts()["prefill"]
    assert len(ids) == 512

    def run():
        llm.reset()
        t0 = time.perf_counter()
        llm.eval(ids)                          # n_batch = n_ubatch = 512: one batch
        return time.perf_counter() - t0

    secs = timed(run, runs)
    emit(work, "tokens/s", [len(ids) / s for s in secs],
         peer="llama.cpp (llama-cpp-python, use_extra_bufts=False)", prompt_tokens=len(ids),
         versions={"llama-cpp-python": llama_cpp.__version__})


def decode_f32(work: str, runs: int) -> None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, DynamicCache

    torch.set_num_threads(THREADS)
    path = Path(smol_gguf())
    folder, name = str(path.parent), path.name
    config = AutoConfig.from_pretrained(folder, gguf_file=name)
    # transformers 4.46.3 sets tie_word_embeddings=False for every GGUF and, as this file
    # has no output.weight, would leave lm_head random: tie it (tools/golden/make_smollm2.py).
    config.tie_word_embeddings = True
    model = AutoModelForCausalLM.from_pretrained(
        folder, gguf_file=name, config=config, torch_dtype=torch.float32).eval()
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    prompt = torch.tensor([prompts()["decode"]])
    new_ids: list[int] = []

    @torch.inference_mode()
    def run():
        # A DynamicCache from the start (as generate() does), not the legacy tuples.
        out = model(prompt, past_key_values=DynamicCache(), use_cache=True)  # not timed
        past = out.past_key_values
        t = out.logits[:, -1].argmax(-1, keepdim=True)
        new_ids.clear()
        t0 = time.perf_counter()
        for i in range(NEW_TOKENS):
            new_ids.append(int(t))
            if i + 1 == NEW_TOKENS:
                break
            out = model(t, past_key_values=past, use_cache=True)
            past = out.past_key_values
            t = out.logits[:, -1].argmax(-1, keepdim=True)
        return time.perf_counter() - t0

    secs = timed(run, runs)
    emit(work, "tokens/s", [(NEW_TOKENS - 1) / s for s in secs],
         peer=f"pytorch-f32 (transformers, GGUF dequantized, attn={model.config._attn_implementation})",
         prompt_tokens=prompt.shape[1], new_tokens=NEW_TOKENS, new_ids_head=new_ids[:16],
         versions=versions("torch", "transformers"))


# The load-* items run CHILD in a fresh interpreter per run: the interpreter and the
# imports are not timed; the clock runs from before the model load to the first token
# (or first embedding) in hand. Peak RSS is the child's ru_maxrss, which includes the
# interpreter and imported libraries; "baseline_rss_mb" is the RSS just before loading.
CHILD = r"""
import json, os, resource, sys, time
sys.path.insert(0, sys.argv[1])
import peers
kind = sys.argv[2]
def rss_mb():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
if kind == "gguf":
    import llama_cpp, numpy as np
    peers.no_extra_buffers()
    path = peers.smol_gguf(); prompt = peers.prompts()["decode"]
    base = rss_mb(); t0 = time.perf_counter()
    llm = peers.llama()
    llm.eval(prompt)
    first = peers.last_argmax(llm)
else:
    import torch
    torch.set_num_threads(peers.THREADS)
    from sentence_transformers import SentenceTransformer
    path = os.path.join(peers.minilm_dir(), "model.safetensors"); text = peers.sentences()[0]
    base = rss_mb(); t0 = time.perf_counter()
    model = SentenceTransformer(os.path.dirname(path), device="cpu")
    first = model.encode([text], normalize_embeddings=True)[0][:4].tolist()
secs = time.perf_counter() - t0
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024   # KiB on Linux
print(json.dumps({"s": secs, "peak_mb": peak, "base_mb": base, "first": first,
                  "file_mb": os.path.getsize(path) / 2**20}))
"""


def load(work: str, runs: int) -> None:
    kind = work.split("-", 1)[1]

    def child():
        res = subprocess.run([sys.executable, "-c", CHILD, str(HERE), kind],
                             capture_output=True, text=True, env=os.environ.copy())
        if res.returncode != 0:
            sys.stderr.write(res.stderr)
            raise SystemExit(f"{work}: child failed with {res.returncode}")
        return json.loads(res.stdout.strip().splitlines()[-1])

    child()                                    # warm-up: page cache, .pyc files
    results = [child() for _ in range(runs)]
    peer = ("llama.cpp (llama-cpp-python, mmap, use_extra_bufts=False)" if kind == "gguf"
            else "sentence-transformers (transformers + safetensors)")
    what = "load + first token" if kind == "gguf" else "load + first embedding"
    common = {"peer": peer, "file_mb": round(results[0]["file_mb"], 2)}
    emit(work, "s", [r["s"] for r in results], measures=f"time to first output ({what})",
         **common)
    emit(work, "MB", [r["peak_mb"] for r in results], measures="peak RSS (ru_maxrss) of the process",
         baseline_rss_mb=round(statistics.median(r["base_mb"] for r in results), 1), **common)


def train_seqcls(work: str, runs: int) -> None:
    """all-MiniLM-L6-v2 + a 2-label head, batches of 16 padded to 64 tokens: forward,
    backward, clip_grad_norm_, AdamW (the Trainer's step), in train mode (dropout on)."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.set_num_threads(THREADS)
    torch.manual_seed(42)
    tok = AutoTokenizer.from_pretrained(minilm_dir())
    model = AutoModelForSequenceClassification.from_pretrained(minilm_dir(), num_labels=2)
    model.train()
    if work == "train-seqcls-checkpointing":
        model.gradient_checkpointing_enable()
    texts = sentences()
    batches = []
    for step in range(8):
        # train-seqcls-full: three sentences per example, so that all 64 tokens are
        # text (no padding); otherwise one (23 tokens, the rest padding).
        per = 3 if work == "train-seqcls-full" else 1
        chunk = [" ".join(texts[((step * 16 + i) * per + j) % len(texts)] for j in range(per))
                 for i in range(16)]
        enc = tok(chunk, padding="max_length", truncation=True, max_length=64, return_tensors="pt")
        enc["labels"] = torch.tensor([i % 2 for i in range(16)])
        batches.append(enc)
    opt = torch.optim.AdamW(model.parameters(), lr=5e-5, weight_decay=0.0)

    bf16 = work == "train-seqcls-bf16"

    def step(b):
        # bf16: PyTorch's mixed precision on CPU (autocast), as Trainer(bf16=True) runs it.
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = model(**b).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad()

    step(batches[0])

    def run():
        for b in batches:
            step(b)

    secs = timed(run, runs)
    peer = "pytorch-bf16-autocast" if bf16 else "pytorch-f32"
    if work == "train-seqcls-checkpointing":
        peer += " gradient checkpointing"
    emit(work, "samples/s", [8 * 16 / s for s in secs], peer=f"{peer} (transformers, AdamW, train mode)",
         batch=16, seq=64, steps=8, versions=versions("torch", "transformers"),
         peak_rss_mb=__import__("resource").getrusage(__import__("resource").RUSAGE_SELF).ru_maxrss / 1024)


def no_peer(work: str, runs: int) -> None:
    """Serving (serve-c1/c8/c32): rustformers' own figures; no peer runs the same
    continuous-batching work on this CPU-only set-up."""
    print(f"{work}: no peer; rustformers figures only", file=sys.stderr)


WORK = {
    "embeddings-f32": (embeddings, 5),
    "embeddings-bf16": (embeddings, 5),
    "decode-gguf": (decode_gguf, 5),
    # decode-gguf with one busy process competing for the cores (run.sh starts it).
    "decode-gguf-busy": (decode_gguf, 3),
    "prefill-gguf": (prefill_gguf, 5),
    "decode-f32": (decode_f32, 3),
    "load-gguf": (load, 5),
    "load-safetensors": (load, 3),
    "train-seqcls": (train_seqcls, 3),
    "train-seqcls-full": (train_seqcls, 3),
    "train-seqcls-bf16": (train_seqcls, 3),
    "train-seqcls-checkpointing": (train_seqcls, 3),
    "serve-c1": (no_peer, 3),
    "serve-c8": (no_peer, 3),
    "serve-c32": (no_peer, 3),
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("work", nargs="?", help=", ".join(WORK))
    ap.add_argument("--runs", type=int, help="timed runs after one warm-up (default 5, 3 for slow items)")
    ap.add_argument("--list", action="store_true", help="print the work items and their default runs, and exit")
    args = ap.parse_args()
    if args.list:
        for name, (_, n) in WORK.items():
            print(name, n)
        return 0
    if args.work not in WORK:
        ap.error(f"unknown work {args.work!r}; one of: {', '.join(WORK)}")
    fn, default_runs = WORK[args.work]
    runs = args.runs or default_runs
    if runs < 1:
        ap.error("--runs must be at least 1")
    fn(args.work, runs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
