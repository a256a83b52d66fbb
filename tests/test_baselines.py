"""FLARE's retrieval trigger and loop, with hand-made log-probabilities."""

import math
import threading
import time
from dataclasses import dataclass, field

import pytest

from cowest.baselines import Flare, Retriever, low_confidence_query, run_flare
from cowest.config import FlareSpec
from cowest.collaborate import Collaborator
from cowest.replies import Completion
from cowest.tasks import get_task


def lp(p):
    return math.log(p)


def test_no_retrieval_when_every_token_is_above_threshold():
    toks = [("The", lp(0.9)), (" town", lp(0.5)), (" has", lp(0.41)), (" 7.", lp(0.99))]
    assert low_confidence_query(toks, 0.4) is None


def test_retrieval_triggers_exactly_below_threshold_and_masks_the_token():
    toks = [("Brim", lp(0.9)), ("sholt", lp(0.9)), (" has", lp(0.8)), (" 7", lp(0.39)), (" bridges.", lp(0.9)),
            (" So", lp(0.2)), (" 10.", lp(0.9))]
    q = low_confidence_query(toks, 0.4)
    assert q == "Brimsholt has bridges."  # first uncertain sentence, " 7" masked
    assert low_confidence_query(toks, 0.39) == "10."  # " 7" (0.39) is not below 0.39; " So" (0.2) is, masked


@dataclass
class ScriptedClient:
    """Answers with scripted log-probabilities; records the prompts it got. A reply
    `(text, probs, error)` is a failed call as the client returns it: `error` set, no text,
    no log-probabilities."""

    replies: list
    mode: str = "chat"
    prompts: list = field(default_factory=list)
    kwargs: list = field(default_factory=list)

    def complete(self, prompt, *, stage, **kw):
        self.prompts.append(prompt)
        self.kwargs.append(kw)
        text, probs, *error = self.replies[min(len(self.prompts) - 1, len(self.replies) - 1)]
        if error:
            return Completion(text="", prompt_tokens=1, completion_tokens=0, logprobs=None,
                              error=error[0])
        return Completion(text=text, prompt_tokens=1, completion_tokens=len(probs),
                          logprobs=[(t, lp(p)) for t, p in probs], cached=False, error=None, latency_s=0.0)


def test_flare_loop_retrieves_then_stops_when_confident():
    task = get_task("synth_ifqa")
    ex = task.load("test", 1, 0)[0]
    unsure = ("Answer: 3", [("Answer", 0.9), (":", 0.9), (" 3", 0.1)])
    sure = ("Answer: 10", [("Answer", 0.9), (":", 0.9), (" 10", 0.95)])
    client = ScriptedClient([unsure, sure])
    fl = Flare(Collaborator(task, client), Retriever(task.corpus()), threshold=0.4, top_k=2, max_steps=3,
               lookahead_tokens=None)
    out = fl.answer(ex, stage="t")
    assert out["retrievals"] == 1 and out["text"] == "Answer: 10"
    assert len(client.prompts) == 2
    assert client.prompts[0] == Collaborator(task, client).alone_prompt(ex)  # first pass = strong alone
    assert all(p in client.prompts[1] for p in out["passages"]) and len(out["passages"]) == 2


def test_flare_respects_max_steps():
    task = get_task("synth_ifqa")
    ex = task.load("test", 1, 0)[0]
    client = ScriptedClient([("Answer: 3", [(" 3", 0.1)])])
    fl = Flare(Collaborator(task, client), Retriever(task.corpus()), threshold=0.4, top_k=1, max_steps=2,
               lookahead_tokens=None)
    assert fl.answer(ex, stage="t")["retrievals"] == 2 and len(client.prompts) == 3


def test_flare_lookahead_mode_probes_short_and_lets_the_answerer_write():
    task = get_task("synth_ifqa")
    ex = task.load("test", 1, 0)[0]
    probe = ScriptedClient([("Reasoning: Brim", [("Reasoning", 0.9), (":", 0.9), (" Brim", 0.1)]),
                            ("Reasoning: Brimsholt has", [("Reasoning", 0.9), (" has", 0.9)])])
    writer = ScriptedClient([("Reasoning: Brimsholt has 7.\nAnswer: 10", [])])
    fl = Flare(Collaborator(task, probe), Retriever(task.corpus()), threshold=0.4, top_k=2, max_steps=3,
               lookahead_tokens=8, answerer=Collaborator(task, writer))
    out = fl.answer(ex, stage="t")
    # probe 1 unsure -> retrieve; probe 2 (with passages) confident -> stop; the writer answers once
    assert out["retrievals"] == 1 and out["text"].endswith("Answer: 10")
    assert len(probe.prompts) == 2 and all(kw["max_tokens"] == 8 and kw["logprobs"] for kw in probe.kwargs)
    assert writer.prompts == [probe.prompts[1]] and "logprobs" not in writer.kwargs[0]
    assert all(p in writer.prompts[0] for p in out["passages"])


def test_flare_lookahead_without_retrieval_answers_the_standalone_prompt():
    task = get_task("synth_ifqa")
    ex = task.load("test", 1, 0)[0]
    probe = ScriptedClient([("Reasoning:", [("Reasoning", 0.9), (":", 0.95)])])
    writer = ScriptedClient([("Answer: 10", [])])
    fl = Flare(Collaborator(task, probe), Retriever(task.corpus()), threshold=0.4, top_k=2, max_steps=3, lookahead_tokens=8,
               answerer=Collaborator(task, writer))
    out = fl.answer(ex, stage="t")
    assert out["retrievals"] == 0 and len(probe.prompts) == 1
    assert writer.prompts == [Collaborator(task, writer).alone_prompt(ex)]  # = the strong-alone call (cache hit)


FAILED = ("", [], "empty reply (blank text '', finish_reason None) (after 3 attempt(s))")


def _flare(task, probe, writer=None, *, lookahead=8):
    return Flare(Collaborator(task, probe), Retriever(task.corpus()), threshold=0.4, top_k=2, max_steps=3,
                 lookahead_tokens=lookahead, answerer=Collaborator(task, writer) if writer else None)


def test_a_failed_first_lookahead_is_the_items_error_not_confidence():
    """A look-ahead reply with an error has no log-probabilities: it must not pass for
    "confident" (which would store a no-retrieval answer for good)."""
    task = get_task("synth_ifqa")
    ex = task.load("test", 1, 0)[0]
    probe, writer = ScriptedClient([FAILED]), ScriptedClient([("Answer: 10", [])])
    out = _flare(task, probe, writer).answer(ex, stage="t")
    assert out["error"] and "look-ahead pass 1" in out["error"] and FAILED[2] in out["error"]
    assert out["text"] == "" and out["retrievals"] == 0 and len(probe.prompts) == 1
    assert writer.prompts == []  # no answer written from an unjudged look-ahead


def test_a_failed_later_lookahead_is_the_items_error():
    task = get_task("synth_ifqa")
    ex = task.load("test", 1, 0)[0]
    unsure = ("Reasoning: Brim", [("Reasoning", 0.9), (":", 0.9), (" Brim", 0.1)])
    probe, writer = ScriptedClient([unsure, FAILED]), ScriptedClient([("Answer: 10", [])])
    out = _flare(task, probe, writer).answer(ex, stage="t")
    assert "look-ahead pass 2" in out["error"] and out["retrievals"] == 1 and writer.prompts == []
    # the rows of the evaluation stage carry it: the pipeline leaves the stage unfinished
    rows = run_flare(FlareSpec(threshold=0.4, top_k=2, max_steps=3, lookahead_tokens=8), [ex],
                     retriever=Retriever(task.corpus()), drafter=Collaborator(task, ScriptedClient([unsure, FAILED])),
                     answerer=Collaborator(task, ScriptedClient([("Answer: 10", [])])), stage="t")
    assert rows[0]["error"] and "look-ahead pass 2" in rows[0]["error"] and rows[0]["final"] == ""


def test_a_failed_answer_in_lookahead_mode_is_the_items_error():
    task = get_task("synth_ifqa")
    ex = task.load("test", 1, 0)[0]
    probe = ScriptedClient([("Reasoning:", [("Reasoning", 0.9), (":", 0.95)])])
    out = _flare(task, probe, ScriptedClient([FAILED])).answer(ex, stage="t")
    assert "FLARE answer" in out["error"] and FAILED[2] in out["error"] and out["retrievals"] == 0


@pytest.mark.parametrize("script", [[FAILED], [("Answer: 3", [(" 3", 0.1)]), FAILED]], ids=["first", "second"])
def test_a_failed_pass_in_whole_answer_mode_is_the_items_error(script):
    task = get_task("synth_ifqa")
    ex = task.load("test", 1, 0)[0]
    client = ScriptedClient(script)
    out = _flare(task, client, lookahead=None).answer(ex, stage="t")
    assert out["error"] and FAILED[2] in out["error"] and out["text"] == ""
    assert len(client.prompts) == len(script) and out["retrievals"] == len(script) - 1


def test_a_successful_item_has_no_error():
    task = get_task("synth_ifqa")
    ex = task.load("test", 1, 0)[0]
    probe = ScriptedClient([("Reasoning:", [("Reasoning", 0.9), (":", 0.95)])])
    assert _flare(task, probe, ScriptedClient([("Answer: 10", [])])).answer(ex, stage="t")["error"] is None
    assert _flare(task, probe, lookahead=None).answer(ex, stage="t")["error"] is None


class ByPromptClient:
    """Answers by prompt alone (the same under any thread schedule): unsure until the prompt
    shows enough passages; records every prompt and the most calls ever in flight at once."""

    mode = "chat"

    def __init__(self, concurrency: int, delay_s: float = 0.02, fail_on: str | None = None):
        self.concurrency, self.delay_s, self.fail_on = concurrency, delay_s, fail_on
        self.prompts: list[str] = []
        self.lock = threading.Lock()
        self.in_flight = self.peak = 0

    def complete(self, prompt, *, stage, **kw):
        with self.lock:
            self.prompts.append(prompt)
            self.in_flight += 1
            self.peak = max(self.peak, self.in_flight)
        try:
            time.sleep(self.delay_s)
            if self.fail_on and self.fail_on in prompt:
                raise RuntimeError("the strong model failed")
            shown = prompt.count("\n- ")  # passages in view
            sure = shown >= len(prompt) % 3  # 0, 1 or 2 passages needed, by prompt
            words = [("Answer", 0.9), (":", 0.9), (f" {len(prompt) % 97}", 0.95 if sure else 0.1)]
            return Completion(text="".join(t for t, _ in words), prompt_tokens=1, completion_tokens=3,
                              logprobs=[(t, lp(p)) for t, p in words])
        finally:
            with self.lock:
                self.in_flight -= 1


@pytest.mark.parametrize("lookahead", [None, 4])
def test_flare_items_run_in_parallel_with_the_same_rows(lookahead):
    task = get_task("synth_ifqa")
    items = task.load("test", 8, 0)
    retriever = Retriever(task.corpus())
    spec = FlareSpec(threshold=0.4, top_k=1, max_steps=3, lookahead_tokens=lookahead)
    runs = {}
    for n in (1, 4):
        drafter, writer = ByPromptClient(n), ByPromptClient(n)
        rows = run_flare(spec, items, retriever=retriever, drafter=Collaborator(task, drafter),
                         answerer=Collaborator(task, writer), stage="t")
        runs[n] = rows, drafter, writer
    (rows1, d1, w1), (rows4, d4, w4) = runs[1], runs[4]
    assert rows4 == rows1 and [r["id"] for r in rows4] == [e.id for e in items]
    assert sum(r["retrievals"] for r in rows1) > 0  # some items did retrieve
    assert d1.peak == 1 and 1 < d4.peak <= 4  # items in parallel, at most `concurrency`
    # each item's passes: the same prompts in the same order (a pass follows the one before)
    for e in items:
        q = task.render_question(e)
        assert [p for p in d4.prompts if q in p] == [p for p in d1.prompts if q in p]
    assert sorted(w4.prompts) == sorted(w1.prompts) and (lookahead is None) == (not w1.prompts)


def test_a_failing_flare_item_is_raised():
    task = get_task("synth_ifqa")
    items = task.load("test", 6, 0)
    client = ByPromptClient(3, fail_on=task.render_question(items[2]))
    with pytest.raises(RuntimeError, match="strong model failed"):
        run_flare(FlareSpec(), items, retriever=Retriever(task.corpus()), drafter=Collaborator(task, client),
                  answerer=Collaborator(task, client), stage="t")


def test_retriever_finds_the_document_naming_the_entity():
    docs = ["Brimsholt has seven bridges.", "Quellmoor has three towers.", "Zelvorin treats grey fever."]
    assert Retriever(docs).search("how many towers in Quellmoor", 1) == ["Quellmoor has three towers."]


def test_supericl_confidence_from_a_real_tiny_model_and_prompt():
    """SuperICL's confidence is the weak model's probability of its own answer tokens."""
    import torch

    from cowest.assets import hf_folder
    from cowest.baselines import SuperICL
    from cowest.weak import answer_confidence, load_weak, render_prompt

    torch.set_num_threads(1)
    model, tok = load_weak(hf_folder("smollm2-135m"), quantization="none")
    prompt = render_prompt(tok, "What is the capital of France? Reply with the answer only.")
    sure = answer_confidence(model, tok, prompt, "Answer: Paris", "Paris")
    unsure = answer_confidence(model, tok, prompt, "Answer: Zyxwvut", "Zyxwvut")
    assert 0.0 < unsure < sure <= 1.0
    task = get_task("synth_med")
    ex = task.load("test", 1, 0)[0]
    sic = SuperICL(task, ScriptedClient([]), [(ex, "B", 0.8123)])
    text = sic.prompt(ex, "C", sure)
    assert f"Specialist prediction: C (confidence {sure:.2f})" in text
    assert "Specialist prediction: B (confidence 0.81)" in text and f"Answer: {task.answer_text(ex)}" in text


def test_flare_is_built_from_every_field_of_its_spec():
    from cowest.config import FlareSpec

    spec = FlareSpec(threshold=0.25, top_k=3, max_steps=2, lookahead_tokens=7)
    assert set(FlareSpec.model_fields) == {"threshold", "top_k", "max_steps", "lookahead_tokens"}, "wire the new field"
    task = get_task("synth_ifqa")
    drafter, answerer = Collaborator(task, ScriptedClient([])), Collaborator(task, ScriptedClient([]))
    fl = Flare.from_spec(spec, collab=drafter, retriever=Retriever(task.corpus()), answerer=answerer)
    assert (fl.threshold, fl.top_k, fl.max_steps, fl.lookahead_tokens, fl.answerer) == (0.25, 3, 2, 7, answerer)
    whole = Flare.from_spec(spec.model_copy(update={"lookahead_tokens": None}), collab=drafter,
                            retriever=Retriever(task.corpus()), answerer=answerer)
    assert whole.answerer is None  # whole-answer mode: the drafter writes the answer too
