"""The server through the official `openai` client and raw HTTP: completions and chat, streamed
and not, concurrent requests, and every kind of bad request answered in OpenAI's error shape."""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import logging
import os
import re
import subprocess
import sys
import time

import httpx2 as httpx
import openai
import pytest
import torch
from transformers import LlamaForCausalLM

from lmforge.jobs.generate import Sampling, generate
from lmforge.jobs.serve.engine import Engine

from .conftest import CONTEXT, NAME

PROMPTS = ["def load(", "import json\n", "class Decoder", "    return ", "# Copyright", "if x:"]


def client(base: str, key: str = "none") -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{base}/v1", api_key=key, max_retries=0)


def greedy(loaded, prompt: str, max_tokens: int) -> str:
    model, tokenizer = loaded
    ids = tokenizer.encode(prompt, add_special_tokens=False).ids
    out = generate(
        model, ids, Sampling(max_tokens, temperature=0), tokenizer.token_to_id("<|eos|>")
    )
    return tokenizer.decode(out)


def test_completion_streamed_and_not_equal_greedy_decoding(serve, loaded):
    api = client(serve())
    done = api.completions.create(model=NAME, prompt="def load(", max_tokens=12, temperature=0)
    (choice,) = done.choices
    assert choice.text == greedy(loaded, "def load(", 12)
    assert choice.finish_reason == "length"
    assert done.usage.completion_tokens == 12 and done.usage.prompt_tokens > 0
    usage = {"include_usage": True}
    stream = api.completions.create(
        model=NAME,
        prompt="def load(",
        max_tokens=12,
        temperature=0,
        stream=True,
        stream_options=usage,
    )
    *chunks, last = list(stream)
    assert "".join(c.choices[0].text for c in chunks) == choice.text
    assert chunks[-1].choices[0].finish_reason == "length"
    assert last.choices == [] and last.usage.completion_tokens == 12


def test_chat_streamed_and_not(serve):
    api = client(serve())
    messages = [
        {"role": "system", "content": "You write Python."},
        {"role": "user", "content": "A function that loads JSON."},
    ]
    done = api.chat.completions.create(model=NAME, messages=messages, max_tokens=8, temperature=0)
    assert done.object == "chat.completion"
    message = done.choices[0].message
    assert message.role == "assistant" and message.content
    stream = api.chat.completions.create(
        model=NAME, messages=messages, max_tokens=8, temperature=0, stream=True
    )
    chunks = list(stream)
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == message.content
    assert chunks[-1].choices[0].finish_reason == "length"


def test_concurrent_requests_batch_and_each_gets_its_own_answer(serve, loaded):
    """16 requests at once (more than the 4 slots) with different prompts and lengths: each
    answer equals the same request decoded alone."""
    api = client(serve(slots=4))
    jobs = [(PROMPTS[i % len(PROMPTS)], 4 + 3 * i % 17) for i in range(16)]

    def ask(job):
        prompt, n = job
        return api.completions.create(model=NAME, prompt=prompt, max_tokens=n, temperature=0)

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(ask, jobs))
    for (prompt, n), answer in zip(jobs, answers, strict=True):
        assert answer.choices[0].text == greedy(loaded, prompt, n), prompt
    metrics = httpx.get(f"{api.base_url}".removesuffix("/v1/") + "/metrics").text
    sizes = [
        float(line.split()[-1])
        for line in metrics.splitlines()
        if line.startswith("lmforge_generated_tokens_total")
    ]
    assert sizes == [sum(n for _, n in jobs)]


def test_sampling_is_seeded_and_respects_stop(serve):
    api = client(serve())

    def ask(**kw):
        return api.completions.create(model=NAME, prompt="import ", max_tokens=20, **kw).choices[0]

    a, b = ask(temperature=1.0, top_p=0.9, seed=7), ask(temperature=1.0, top_p=0.9, seed=7)
    assert a.text == b.text
    full = ask(temperature=0).text
    stop = full[3:5]
    cut = ask(temperature=0, stop=[stop])
    assert cut.text == full[: full.index(stop)] and cut.finish_reason == "stop"


def test_greedy_output_equals_transformers_generate(serve, model_dir, loaded):
    """The same exported weights in transformers' LlamaForCausalLM, greedy, token for token."""
    _, tokenizer = loaded
    reference = LlamaForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32).eval()
    api = client(serve())
    for prompt in PROMPTS:
        ids = tokenizer.encode(prompt, add_special_tokens=False).ids
        out = reference.generate(
            torch.tensor([ids]),
            max_new_tokens=24,
            do_sample=False,
            eos_token_id=tokenizer.token_to_id("<|eos|>"),
            pad_token_id=0,
        )
        expected = out[0, len(ids) :].tolist()
        got = api.completions.create(model=NAME, prompt=prompt, max_tokens=24, temperature=0)
        assert got.usage.completion_tokens == len(expected), prompt
        assert got.choices[0].text == tokenizer.decode(expected), prompt


def test_n_candidates_are_sampled_each_on_its_own_seed(serve):
    """n > 1: a choice per candidate, indexed, each what a request of n=1 with seed + i gives;
    the usage counts the prompt once and every candidate's tokens; chat alike."""
    api = client(serve())
    ask = dict(model=NAME, prompt="def load(", max_tokens=8, temperature=1.0, seed=7)
    done = api.completions.create(**ask, n=3)
    assert [c.index for c in done.choices] == [0, 1, 2]
    alone = [api.completions.create(**(ask | {"seed": 7 + i})).choices[0] for i in range(3)]
    assert [c.text for c in done.choices] == [c.text for c in alone]
    assert len({c.text for c in done.choices}) > 1  # sampled apart, not one reply three times
    one = api.completions.create(**ask)
    assert done.usage.prompt_tokens == one.usage.prompt_tokens
    assert done.usage.completion_tokens == sum(
        api.completions.create(**(ask | {"seed": 7 + i})).usage.completion_tokens for i in range(3)
    )
    chat = api.chat.completions.create(
        model=NAME, messages=[{"role": "user", "content": "hi"}], max_tokens=6, seed=1, n=2
    )
    assert [c.index for c in chat.choices] == [0, 1]
    assert all(c.message.role == "assistant" for c in chat.choices)


@pytest.mark.parametrize(("body", "status", "param", "words"), [
    (b"{not json", 400, None, "not valid JSON"),
    (b"[1, 2]", 400, None, "JSON object"),
    (json.dumps({"model": "gpt-4", "prompt": "x"}).encode(), 404, "model", "does not exist"),
    (json.dumps({"model": NAME, "prompt": "x", "temperature": 3}).encode(), 400, "temperature", "less than or equal to 2"),
    (json.dumps({"model": NAME, "prompt": "x", "top_p": 0}).encode(), 400, "top_p", "greater than 0"),
    (json.dumps({"model": NAME, "prompt": "x", "max_tokens": 100000}).encode(), 400, "max_tokens", "more than this server allows"),
    (json.dumps({"model": NAME, "prompt": "x" * 5000}).encode(), 400, "prompt", "this server takes at most"),
    (json.dumps({"model": NAME}).encode(), 400, "prompt", "Field required"),
    (json.dumps({"model": NAME, "prompt": "x", "n": 17}).encode(), 400, "n", "less than or equal to 16"),
    (json.dumps({"model": NAME, "prompt": "x", "n": 2, "stream": True}).encode(), 400, None, "n: a stream carries one candidate"),
])  # fmt: skip
def test_bad_requests_get_openai_errors_and_the_server_keeps_serving(
    serve, body, status, param, words
):
    base = serve()
    answer = httpx.post(
        f"{base}/v1/completions", content=body, headers={"content-type": "application/json"}
    )
    assert answer.status_code == status, answer.text
    error = answer.json()["error"]
    assert error["param"] == param and words in error["message"], error
    assert client(base).completions.create(model=NAME, prompt="x", max_tokens=2).choices


def test_request_size_limit(serve):
    base = serve(limits={"maxRequestBytes": 2048})
    answer = httpx.post(f"{base}/v1/completions", json={"model": NAME, "prompt": "x" * 3000})
    assert answer.status_code == 413 and "maxRequestBytes" in answer.json()["error"]["message"]


def test_api_keys_401_403_and_rate_limit_429(serve, tmp_path):
    keys = tmp_path / "keys"
    keys.mkdir()
    (keys / "alice").write_text("sk-alice\n")
    (keys / "bob").write_text("sk-bob")
    (keys / "bob.models").write_text("another-model")
    base = serve(apiKeysDir=str(keys), rateLimit={"requestsPerMinute": 3})
    with pytest.raises(openai.AuthenticationError):
        client(base, "sk-wrong").completions.create(model=NAME, prompt="x", max_tokens=1)
    assert httpx.get(f"{base}/v1/models").status_code == 401
    with pytest.raises(openai.PermissionDeniedError, match="no access to model"):
        client(base, "sk-bob").completions.create(model=NAME, prompt="x", max_tokens=1)
    alice = client(base, "sk-alice")
    assert [m.id for m in alice.models.list().data] == [NAME]
    for _ in range(3):
        alice.completions.create(model=NAME, prompt="x", max_tokens=1)
    with pytest.raises(openai.RateLimitError) as limited:
        alice.completions.create(model=NAME, prompt="x", max_tokens=1)
    assert int(limited.value.response.headers["retry-after"]) >= 1


def test_safety_filter_redacts_or_refuses(serve, loaded):
    full = greedy(loaded, "def load(", 16)
    word = max(full.split(), key=len).strip("()[]{}:,.'\"")
    redact = client(serve(safety={"patterns": [re.escape(word)]}))
    text = (
        redact.completions.create(model=NAME, prompt="def load(", max_tokens=16, temperature=0)
        .choices[0]
        .text
    )
    assert word not in text and "[redacted]" in text
    refuse = client(serve(safety={"patterns": [re.escape(word)], "action": "refuse"}))
    choice = refuse.completions.create(
        model=NAME, prompt="def load(", max_tokens=16, temperature=0
    ).choices[0]
    assert (choice.text, choice.finish_reason) == ("", "content_filter")
    streamed = list(
        refuse.completions.create(
            model=NAME, prompt="def load(", max_tokens=16, temperature=0, stream=True
        )
    )
    assert word not in "".join(c.choices[0].text for c in streamed)
    assert streamed[-1].choices[0].finish_reason == "content_filter"


def test_audit_log_has_metadata_and_prompts_only_when_enabled(serve, caplog):
    caplog.set_level(logging.INFO, logger="lmforge.audit")
    greedy2 = {"max_tokens": 2, "temperature": 0}
    client(serve()).completions.create(model=NAME, prompt="secret prompt", **greedy2)
    stream = client(serve()).completions.create(
        model=NAME, prompt="secret stream", stream=True, **greedy2
    )
    assert list(stream)
    client(serve(logPrompts=True)).completions.create(model=NAME, prompt="open prompt", **greedy2)
    lines = [json.loads(r.message) for r in caplog.records if r.name == "lmforge.audit"]
    assert [line["status"] for line in lines] == [200, 200, 200]
    assert "prompt" not in lines[0] and "secret" not in caplog.text
    assert lines[1]["completion_tokens"] == lines[0]["completion_tokens"] > 0
    assert lines[2]["prompt"] == "open prompt" and "completion" in lines[2]
    assert all(line["key"] is None and line["route"] == "/v1/completions" for line in lines)


def test_feedback_is_stored_as_preference_rows(serve, tmp_path):
    base = serve(feedbackUri=(tmp_path / "feedback").as_uri())
    ok = httpx.post(f"{base}/v1/feedback", json={"prompt": "p", "chosen": "a", "rejected": "b"})
    assert ok.status_code == 200, ok.text
    ranked = httpx.post(f"{base}/v1/feedback", json={"prompt": "p", "responses": ["a", "b", "c"]})
    rated = httpx.post(f"{base}/v1/feedback", json={"prompt": "p", "response": "a", "rating": 5})
    assert ranked.status_code == rated.status_code == 200
    rows = [
        json.loads(p.read_text()) for p in sorted((tmp_path / "feedback" / "preferences").iterdir())
    ]
    assert sorted(r.get("chosen", "") for r in rows) == ["", "a"]
    assert [
        json.loads(p.read_text())["rating"] for p in (tmp_path / "feedback" / "ratings").iterdir()
    ] == [5]
    tie = httpx.post(f"{base}/v1/feedback", json={"prompt": "p", "chosen": "a", "rejected": "a"})
    assert tie.status_code == 400 and "tie" in tie.json()["error"]["message"]
    one = httpx.post(f"{base}/v1/feedback", json={"prompt": "p", "responses": ["a"]})
    assert one.status_code == 400 and one.json()["error"]["param"] == "responses"


def test_health_readiness_and_context(serve, loaded):
    base = serve()
    _, tokenizer = loaded
    ids = tokenizer.encode("x " * CONTEXT, add_special_tokens=False).ids[: CONTEXT - 10]
    prompt = tokenizer.decode(ids)
    assert httpx.get(f"{base}/healthz").json() == {"status": "ok"}
    assert httpx.get(f"{base}/readyz").status_code == 200
    assert httpx.get(f"{base}/nope").status_code == 404
    long = client(base).completions.create(model=NAME, prompt=prompt, max_tokens=100, temperature=0)
    assert long.choices[0].finish_reason == "length"
    assert long.usage.prompt_tokens + long.usage.completion_tokens <= CONTEXT


def test_a_dead_engine_fails_both_probes(serve, monkeypatch):
    def die(self):
        raise SystemExit("the decoding thread ends")  # not an Exception: the loop does not catch it

    monkeypatch.setattr(Engine, "_decode", die)
    base = serve()
    assert httpx.get(f"{base}/healthz").status_code == 200
    with contextlib.suppress(httpx.TimeoutException):
        httpx.post(f"{base}/v1/completions", json={"model": NAME, "prompt": "x"}, timeout=2)
    assert httpx.get(f"{base}/healthz").json() == {"status": "engine stopped"}
    assert (
        httpx.get(f"{base}/healthz").status_code == httpx.get(f"{base}/readyz").status_code == 503
    )


def test_lmforge_serve_command_answers_the_openai_client(model_dir, otlp):
    """The real entry point: `lmforge serve --model DIR` in its own process, int8, exporting a
    span per request over OTLP."""
    endpoint, bodies = otlp
    from .conftest import free_port

    port = free_port()
    command = [sys.executable, "-m", "lmforge.operator.cli", "serve", "--model", str(model_dir),
               "--name", NAME, "--port", str(port), "--quantization", "int8"]  # fmt: skip
    env = {**os.environ, "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint, "OTEL_BSP_SCHEDULE_DELAY": "100"}
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    )
    try:
        banner = f"serving {NAME} on http://127.0.0.1:{port}/v1"
        assert any(banner in line for line in iter(process.stdout.readline, "")), "no banner"
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "no /readyz"
                time.sleep(0.1)
        api = client(f"http://127.0.0.1:{port}")
        answer = api.chat.completions.create(
            model=NAME, messages=[{"role": "user", "content": "hi"}], max_tokens=4
        )
        assert answer.usage.completion_tokens <= 4 and answer.choices[0].message.role == "assistant"
    finally:
        process.terminate()
        process.wait(10)
    received = b"".join(bodies)
    assert b"POST /v1/chat/completions" in received and b"lmforge-serve" in received
