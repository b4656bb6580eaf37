"""The engine on its own: a request joins a running batch between decode steps, and a cancelled
one gives its slot back."""

import threading

from lmforge.jobs.generate import Sampling, generate
from lmforge.jobs.serve.engine import Engine, Output


class Collect:
    def __init__(self):
        self.outputs: list[Output] = []
        self.done = threading.Event()
        self.first = threading.Event()

    def __call__(self, output: Output) -> None:
        self.outputs.append(output)
        self.first.set()
        if output.finish_reason:
            self.done.set()


def test_a_new_request_joins_the_running_batch(loaded):
    model, tokenizer = loaded
    engine = Engine(model, tokenizer, slots=2)
    try:
        prompt = tokenizer.encode("def ", add_special_tokens=False).ids
        order: list[str] = []
        long, short = Collect(), Collect()
        engine.submit(
            prompt,
            Sampling(80, temperature=0),
            lambda o: (long(o), o.finish_reason and order.append("long")),
        )
        assert long.first.wait(10)
        engine.submit(
            prompt,
            Sampling(3, temperature=0),
            lambda o: (short(o), o.finish_reason and order.append("short")),
        )
        assert long.done.wait(30) and short.done.wait(30)
        assert order == ["short", "long"]  # it did not wait for the long one to finish
        assert short.outputs[-1].completion_tokens == 3
        assert long.outputs[-1].finish_reason == "length"
    finally:
        engine.close()


def test_sequences_that_move_slots_keep_their_text(loaded):
    """Requests of different lengths over 3 slots: as each finishes, the last running sequence
    moves into its slot (the running ones always hold slots 0..n-1), and every reply still equals
    its greedy continuation generated alone."""
    model, tokenizer = loaded
    engine = Engine(model, tokenizer, slots=3)
    layouts = []
    engine.on_step = lambda batch, queued: layouts.append([r.slot for r in engine.running])
    prompts = ["def load(", "import json\n", "class A", "    return ", "# Copy", "if x:"]
    lengths = [3, 20, 7, 15, 11, 5]
    try:
        done = [Collect() for _ in prompts]
        for prompt, n, collect in zip(prompts, lengths, done, strict=True):
            ids = tokenizer.encode(prompt, add_special_tokens=False).ids
            engine.submit(ids, Sampling(n, temperature=0), collect)
        assert all(c.done.wait(60) for c in done)
    finally:
        engine.close()
    assert all(slots == list(range(len(slots))) for slots in layouts)
    assert any(len(slots) == 3 for slots in layouts)
    for prompt, n, collect in zip(prompts, lengths, done, strict=True):
        ids = tokenizer.encode(prompt, add_special_tokens=False).ids
        alone = tokenizer.decode(generate(model, ids, Sampling(n, temperature=0), engine.eos))
        assert "".join(o.text for o in collect.outputs) == alone


def test_cancelled_request_frees_its_slot(loaded):
    model, tokenizer = loaded
    engine = Engine(model, tokenizer, slots=1)
    try:
        prompt = tokenizer.encode("import ", add_special_tokens=False).ids
        gate, first = threading.Event(), Collect()

        def held(output: Output) -> None:  # the engine waits here until the test has cancelled
            first(output)
            gate.wait(10)

        handle = engine.submit(prompt, Sampling(10_000, temperature=0), held)
        assert first.first.wait(10)
        second = Collect()
        engine.submit(prompt, Sampling(2, temperature=0), second)
        engine.cancel(handle)
        gate.set()
        assert second.done.wait(10)  # only one slot: it ran because the first let go
        assert len(first.outputs) == 1 and not first.done.is_set()  # nothing more for it
        assert engine.running == []
    finally:
        engine.close()


def test_incremental_text_equals_decoding_the_whole(loaded):
    """Token by token, the engine's text is always a prefix of the whole decoded reply, never
    ends in half a character, and ends equal to it (multi-byte characters span tokens here: the
    tokenizer has few non-ASCII merges)."""
    from lmforge.jobs.serve.engine import Request

    model, tokenizer = loaded
    engine = Engine(model, tokenizer, slots=1)
    try:
        ids = tokenizer.encode(
            "naïve café → 😀 done\n    return 'ünïcode'", add_special_tokens=False
        ).ids
        whole = tokenizer.decode(ids)
        request = Request([1], Sampling(), lambda o: None)
        seen = []
        for token in ids:
            request.tokens.append(token)
            seen.append(engine._text(request))
        assert all(whole.startswith(t) and "\ufffd" not in t for t in seen)
        assert seen[-1] == whole and len(set(seen)) < len(seen)  # some tokens waited
    finally:
        engine.close()
