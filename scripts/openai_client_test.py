"""`rustformers serve` driven by the official `openai` client over loopback.

Checks: chat (greedy: equal to `rustformers run text-generation` on the same chat),
chat with `tools` (equal to `run` on `{"messages", "tools"}`), streaming chat (deltas add
up to the same reply), completions (equal to `run` on the prompt), embeddings, n > 1,
stop sequences, errors as openai exceptions with the server still up, log-probabilities,
64 concurrent streaming requests all completed with no retries and none dropped (the
server's /metrics counts 64 more chat 200s and no 429/5xx; aggregate tokens/s, counted by
the usage chunk that `stream_options.include_usage` asks for, and median time to first
token printed), 1000 sequential requests with resident memory growing less than 4 MB,
and SIGTERM during a long stream: the stream still completes (finish reason, usage), a
new request is refused, and the server exits 0.
Prints one JSON line of figures.
"""

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import openai


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def chat_status_counts(base: str) -> dict:
    """Chat requests by HTTP status, from the server's Prometheus text."""
    text = urllib.request.urlopen(base + "/metrics", timeout=5).read().decode()
    counts = {}
    prefix = 'rustformers_requests_total{endpoint="chat",status="'
    for line in text.splitlines():
        if line.startswith(prefix):
            status, value = line[len(prefix):].split('"}')
            counts[int(status)] = float(value)
    return counts


def run_cli(bin_: str, *args: str) -> list:
    out = subprocess.run([bin_, "run", *args], check=True, capture_output=True, text=True).stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--gen", required=True)
    ap.add_argument("--emb", required=True)
    a = ap.parse_args()
    port = free_port()
    server = subprocess.Popen(
        [a.bin, "serve", "--model", a.gen, "--model", a.emb, "--port", str(port), "--max-queue", "256"],
        stderr=subprocess.PIPE,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    base = f"http://127.0.0.1:{port}"
    for _ in range(200):
        try:
            urllib.request.urlopen(base + "/health", timeout=1)
            break
        except OSError:
            time.sleep(0.1)
    else:
        print("server did not start:", server.stderr.read().decode(), file=sys.stderr)
        return 1
    figures = {}
    try:
        client = openai.OpenAI(base_url=base + "/v1", api_key="none")
        chat = [{"role": "user", "content": "Hello there, how are you?"}]
        models = [m.id for m in client.models.list().data]
        assert models == [a.gen, a.emb], models

        # Greedy chat == `rustformers run text-generation` on the same chat.
        r = client.chat.completions.create(model=a.gen, messages=chat, max_tokens=8, temperature=0)
        reply = r.choices[0].message.content
        ran = run_cli(a.bin, "text-generation", "--model", a.gen, "--max-new-tokens", "8", json.dumps(chat))
        want = ran[0][0]["generated_text"][-1]["content"]
        assert reply == want, (reply, want)
        assert r.usage.completion_tokens > 0 and r.usage.prompt_tokens > 0

        # Chat with tools: they go to the chat template, as `run` on {"messages", "tools"}.
        tools = [{
            "type": "function",
            "function": {
                "name": "get_current_weather",
                "description": "The current weather in a city",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
            },
        }]
        t = client.chat.completions.create(model=a.gen, messages=chat, tools=tools, max_tokens=8, temperature=0)
        ran = run_cli(
            a.bin, "text-generation", "--model", a.gen, "--max-new-tokens", "8", json.dumps({"messages": chat, "tools": tools})
        )
        assert t.choices[0].message.content == ran[0][0]["generated_text"][-1]["content"], (t, ran)

        # Streaming chat: the deltas add up to the same reply.
        text = ""
        for chunk in client.chat.completions.create(model=a.gen, messages=chat, max_tokens=8, temperature=0, stream=True):
            text += chunk.choices[0].delta.content or ""
        assert text == reply, (text, reply)

        # Completions == `run` with the prompt left out of the output.
        c = client.completions.create(model=a.gen, prompt="The cat", max_tokens=10, temperature=0)
        ran = run_cli(a.bin, "text-generation", "--model", a.gen, "--max-new-tokens", "10", "--return-full-text", "false", "The cat")
        assert c.choices[0].text == ran[0][0]["generated_text"], (c.choices[0].text, ran)

        # Stop sequences.
        full = c.choices[0].text
        stop = full[2:4]
        cut = client.completions.create(model=a.gen, prompt="The cat", max_tokens=10, temperature=0, stop=[stop])
        assert stop not in cut.choices[0].text and full.startswith(cut.choices[0].text), (stop, cut)
        assert cut.choices[0].finish_reason == "stop"

        # n > 1.
        n = client.chat.completions.create(model=a.gen, messages=chat, max_tokens=5, n=3, temperature=0.9, seed=3)
        assert [ch.index for ch in n.choices] == [0, 1, 2]

        # Log-probabilities: one entry per generated token, greedy picks the most likely.
        lp = client.chat.completions.create(
            model=a.gen, messages=chat, max_tokens=4, temperature=0, logprobs=True, top_logprobs=2
        )
        content = lp.choices[0].logprobs.content
        assert len(content) == lp.usage.completion_tokens, (content, lp.usage)
        for tok in content:
            assert tok.logprob <= 0 and len(tok.top_logprobs) == 2, tok
            assert tok.top_logprobs[0].token == tok.token, tok
        clp = client.completions.create(model=a.gen, prompt="The cat", max_tokens=3, temperature=0, logprobs=1)
        assert len(clp.choices[0].logprobs.tokens) == clp.usage.completion_tokens, clp

        # Embeddings.
        e = client.embeddings.create(model=a.emb, input=["one sentence", "another"])
        assert len(e.data) == 2 and len(e.data[0].embedding) > 0

        # Errors as the client's exceptions; the server stays up.
        for call, exc in [
            (lambda: client.chat.completions.create(model=a.gen, messages=chat, max_tokens=0), openai.BadRequestError),
            (lambda: client.chat.completions.create(model="gpt-9", messages=chat), openai.NotFoundError),
            (lambda: client.chat.completions.create(model=a.gen, messages=[]), openai.BadRequestError),
            (lambda: client.chat.completions.create(model=a.gen, messages=chat, max_tokens=100000), openai.BadRequestError),
            (lambda: client.embeddings.create(model=a.emb, input=[]), openai.BadRequestError),
        ]:
            try:
                call()
                raise AssertionError("no error")
            except exc:
                pass
            urllib.request.urlopen(base + "/health", timeout=5)

        # 64 concurrent streaming requests; no retries, so a refused one fails the test.
        async def load() -> int:
            ac = openai.AsyncOpenAI(base_url=base + "/v1", api_key="none", max_retries=0)

            async def one(i: int) -> tuple:
                pieces, tokens = 0, None
                sent = time.perf_counter()
                stream = await ac.chat.completions.create(
                    model=a.gen, messages=chat, max_tokens=16, temperature=0.8, seed=i, stream=True,
                    stream_options={"include_usage": True}, extra_body={"ignore_eos": True},
                )
                async for chunk in stream:
                    if chunk.choices and chunk.choices[0].delta.content:
                        if pieces == 0:
                            first_token.append(time.perf_counter() - sent)
                        pieces += 1
                    if chunk.usage is not None:
                        tokens = chunk.usage.completion_tokens
                assert tokens is not None and tokens >= pieces > 0, (pieces, tokens)
                return pieces, tokens

            counts = await asyncio.gather(*(one(i) for i in range(64)))
            return sum(p for p, _ in counts), sum(t for _, t in counts)

        first_token: list = []
        before = chat_status_counts(base)
        t0 = time.perf_counter()
        pieces, tokens = asyncio.run(load())
        secs = time.perf_counter() - t0
        # None dropped: the server answered all 64 with 200, and none with 429 or 5xx.
        after = chat_status_counts(base)
        assert after.get(200, 0) - before.get(200, 0) == 64, (before, after)
        refused = {s: n - before.get(s, 0) for s, n in after.items() if s == 429 or s >= 500}
        assert not any(refused.values()), refused
        first_token.sort()
        figures["ttft_median_s"] = round(first_token[len(first_token) // 2], 3)
        figures["concurrent_streams"] = 64
        figures["streamed_pieces"] = pieces
        figures["generated_tokens"] = tokens
        figures["aggregate_tokens_per_s"] = round(tokens / secs, 1)
        figures["load_seconds"] = round(secs, 2)

        # 1000 sequential requests: resident memory stays bounded. Each fills most of the
        # 64-token context (about 48 prompt tokens and 4 new ones).
        filler = "The cat sat on the mat. " * 3
        for i in range(50):
            client.completions.create(model=a.gen, prompt=f"Hi {i}. {filler}", max_tokens=4, temperature=0)
        before = rss_mb(server.pid)
        for i in range(1000):
            client.completions.create(model=a.gen, prompt=f"Hi {i}. {filler}", max_tokens=4, temperature=0)
        after = rss_mb(server.pid)
        figures["rss_mb_before"] = round(before, 1)
        figures["rss_mb_after_1000"] = round(after, 1)
        # 4 MB over 1000 requests (4 KB each): below what keeping each request's KV cache
        # would take (256 bytes a token on this model, about 13 KB a request).
        assert after - before < 4, (before, after)

        # SIGTERM with a stream in flight: a stream as long as the context allows
        # (ignore_eos: every token generated), SIGTERM once its first chunk is in.
        with open(os.path.join(a.gen, "config.json")) as f:
            context = json.load(f)["max_position_embeddings"]
        prompt_tokens = client.chat.completions.create(model=a.gen, messages=chat, max_tokens=1).usage.prompt_tokens
        long_tokens = context - prompt_tokens
        drain = openai.OpenAI(base_url=base + "/v1", api_key="none", max_retries=0, timeout=30)
        chunks = iter(
            drain.chat.completions.create(
                model=a.gen, messages=chat, max_tokens=long_tokens, temperature=0, stream=True,
                stream_options={"include_usage": True}, extra_body={"ignore_eos": True},
            )
        )
        finish, usage = None, None

        def take(chunk) -> None:
            nonlocal finish, usage
            if chunk.choices and chunk.choices[0].finish_reason:
                finish = chunk.choices[0].finish_reason
            if chunk.usage is not None:
                usage = chunk.usage

        take(next(chunks))
        server.send_signal(signal.SIGTERM)
        # Half a second on, the server has stopped taking work (it drains, or has exited):
        # a new request is refused, or finds no server.
        time.sleep(0.5)
        late = openai.OpenAI(base_url=base + "/v1", api_key="none", max_retries=0, timeout=5)
        try:
            late.completions.create(model=a.gen, prompt="Hi", max_tokens=1)
            raise AssertionError("a request was served after SIGTERM")
        except openai.APIConnectionError:
            pass
        except openai.APIStatusError as e:
            assert e.status_code == 503, e
        # The stream in flight still runs to its end.
        for chunk in chunks:
            take(chunk)
        assert finish == "length", finish
        assert usage is not None and usage.completion_tokens == long_tokens, (usage, long_tokens)
        assert usage.prompt_tokens == prompt_tokens, usage
        figures["drained_stream_tokens"] = usage.completion_tokens
        code = server.wait(timeout=20)
    finally:
        if server.poll() is None:
            server.send_signal(signal.SIGTERM)
            try:
                code = server.wait(timeout=20)
            except subprocess.TimeoutExpired:
                server.kill()
                code = -1
    assert code == 0, f"exit code {code}"
    print(json.dumps({"openai_client": openai.__version__, **figures}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
