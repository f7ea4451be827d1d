"""The model worker: concurrent requests share decode steps, and batching never changes what a row generates."""

from __future__ import annotations

import threading

import pytest

from codelm.generate import SamplingParams, generate
from web.engine import Engine, Job, QueueFull, RowSpec
from web_support import random_model, wait_until


class Collector:
    def __init__(self, n: int = 1):
        self.text = [""] * n
        self.finish = [None] * n
        self.done = threading.Event()

    def sink(self, event):
        self.text[event.index] += event.text
        if event.finish_reason:
            self.finish[event.index] = event.finish_reason
            if all(self.finish):
                self.done.set()


PROMPTS = ["def add(a, b):", "import os\nimport sys\n\nclass Foo(object):\n    def __init__(self):", "x = 1",
           "while True:\n    pass", "for i in range(10):\n    print(i)"]


@pytest.mark.parametrize("temperature", [0.0, 0.9])
def test_rows_joining_a_running_batch_generate_what_they_would_alone(tokenizer, temperature):
    model = random_model(context_length=256)
    params = [SamplingParams(max_new_tokens=20 + 7 * k, temperature=temperature, top_p=0.9, seed=100 + k)
              for k in range(len(PROMPTS))]
    alone = [generate(model, tokenizer, p, sp) for p, sp in zip(PROMPTS, params)]
    engine = Engine(model, tokenizer, max_batch=3).start()
    try:
        results = []
        for prompt, sp in zip(PROMPTS, params):
            c = Collector()
            engine.submit(Job([RowSpec([tokenizer.l2r_id] + tokenizer.encode(prompt), sp)], c.sink))
            results.append(c)
        assert all(c.done.wait(60) for c in results)
        assert [c.text[0] for c in results] == alone
        # one request at a time would take a decode step per token after each prefill's first one
        assert engine.steps < engine.generated_tokens - len(PROMPTS), "rows did not share decode steps"
        assert wait_until(lambda: engine.completed_rows == len(PROMPTS) and engine.active_rows == 0)
    finally:
        engine.stop()


def test_a_full_queue_refuses_new_jobs(tokenizer):
    engine = Engine(random_model(), tokenizer, max_batch=1, max_queue=2)  # not started: nothing is taken off
    job = lambda: Job([RowSpec([tokenizer.l2r_id], SamplingParams(max_new_tokens=1))], lambda e: None)
    engine.submit(job())
    engine.submit(job())
    with pytest.raises(QueueFull, match="busy"):
        engine.submit(job())


def test_a_cancelled_job_stops_generating(tokenizer):
    engine = Engine(random_model(), tokenizer, max_batch=2).start()
    try:
        c = Collector()
        job = Job([RowSpec([tokenizer.l2r_id] + tokenizer.encode("def"), SamplingParams(max_new_tokens=900))],
                  c.sink)
        engine.submit(job)
        assert wait_until(lambda: engine.generated_tokens >= 5)
        job.cancel()
        assert c.done.wait(60) and c.finish == ["cancelled"]
        assert wait_until(lambda: engine.active_rows == 0)
        produced = engine.generated_tokens
        assert produced < 900 and engine.cancelled_rows == 1
    finally:
        engine.stop()
