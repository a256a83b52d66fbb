"""The paper's retrieval and collaboration baselines: FLARE and SuperICL.

(The weak model alone, the strong model alone, standard refinement and RLWF reuse the
method's own pieces; `cowest.pipeline` runs `run_flare` / `run_supericl` as evaluation stages.)

FLARE (Jiang et al. 2023), active retrieval, as run here: the strong model writes its
answer with token log-probabilities; when any token of it has probability below
`threshold`, the sentence holding the first such token becomes a retrieval query (its
low-confidence tokens masked out, the question prepended), the top-k passages of the
task's corpus are retrieved with BM25 (`bm25s`), and the answer is regenerated with those
passages in view. This repeats up to `max_steps` times or until no token is uncertain.
It is FLARE-direct with a whole-answer look-ahead, which fits a chat API.

SuperICL (Xu et al. 2023): the weak model's prediction and its confidence (the
probability of its answer tokens) are written into the strong model's prompt, after
in-context examples from the training split that carry the weak model's predictions and
the gold answers; the strong model gives the final answer and may override the weak one.
"""

from __future__ import annotations

import math
import re
import threading
from dataclasses import dataclass, field
from typing import Any, Sequence

from cowest import prompts
from cowest.collaborate import Collaborator, answer_hint
from cowest.config import FlareSpec
from cowest.client import StrongClient
from cowest.replies import Completion
from cowest.tasks.base import Example, Task


# ----------------------------------------------------------------------------- FLARE
def low_confidence_query(logprobs: Sequence[tuple[str, float]], threshold: float) -> str | None:
    """The retrieval query FLARE forms from a drafted answer, or None when all is confident.

    Retrieval triggers exactly when some token's probability is below `threshold`; the
    query is the sentence holding the first such token, with its low-confidence tokens
    removed (FLARE's "masked query").
    """
    probs = [(tok, math.exp(lp)) for tok, lp in logprobs]
    first = next((i for i, (_, p) in enumerate(probs) if p < threshold), None)
    if first is None:
        return None
    # sentence bounds around the first uncertain token
    start = first
    while start > 0 and not re.search(r"[.!?\n]\s*$", probs[start - 1][0]):
        start -= 1
    end = first
    while end < len(probs) - 1 and not re.search(r"[.!?\n]\s*$", probs[end][0]):
        end += 1
    kept = "".join(tok for tok, p in probs[start : end + 1] if p >= threshold)
    return re.sub(r"\s+", " ", kept).strip()


class Retriever:
    """BM25 over a task's corpus (bm25s). Safe to share between threads (searches take turns)."""

    def __init__(self, corpus: Sequence[str]):
        import bm25s

        if not corpus:
            raise ValueError("the task declares an empty retrieval corpus")
        self.corpus = list(corpus)
        self._bm25 = bm25s.BM25()
        self._bm25.index(bm25s.tokenize(self.corpus, stopwords="en", show_progress=False), show_progress=False)
        self._lock = threading.Lock()

    def search(self, query: str, k: int) -> list[str]:
        import bm25s

        k = min(k, len(self.corpus))
        with self._lock:
            docs, _ = self._bm25.retrieve(
                bm25s.tokenize([query], stopwords="en", show_progress=False), k=k, show_progress=False
            )
        return [self.corpus[int(i)] for i in docs[0]]


@dataclass
class Flare:
    """FLARE (Jiang et al., 2023): look ahead, retrieve where the strong model is unsure, regenerate.

    Two ways to look ahead:
    - ``lookahead_tokens=None``: the whole answer is the look-ahead; every pass asks the
      `collab` client for log-probabilities and the last pass is the answer.
    - ``lookahead_tokens=N`` (FLARE's "next sentence"): each pass drafts only the first N
      tokens with log-probabilities; the answer is then written by `answerer` (a client
      without log-probabilities, e.g. a fast local server) from the same prompt, passages
      included. Local llama.cpp servers pay per log-probability token, so this is the cheap
      mode; with no retrieval its answer call is the "strong alone" call (a cache hit).
    """

    collab: Collaborator  # its task, its client (with log-probabilities), the standalone prompt
    retriever: Retriever
    threshold: float  # the settings: see `cowest.config.FlareSpec`
    top_k: int
    max_steps: int
    lookahead_tokens: int | None
    answerer: Collaborator | None = None  # writes the answer in look-ahead mode (default: collab)

    @classmethod
    def from_spec(cls, spec: FlareSpec, *, collab: Collaborator, retriever: Retriever,
                  answerer: Collaborator) -> "Flare":
        """FLARE as the profile's `baselines.flare` says; `answerer` is used in look-ahead mode only."""
        return cls(collab, retriever, threshold=spec.threshold, top_k=spec.top_k, max_steps=spec.max_steps,
                   lookahead_tokens=spec.lookahead_tokens,
                   answerer=answerer if spec.lookahead_tokens is not None else None)

    @property
    def task(self) -> Task:
        return self.collab.task

    @property
    def client(self) -> StrongClient:
        return self.collab.client

    def prompt(self, ex: Example, passages: Sequence[str]) -> str:
        if not passages:  # the first pass is the strong model's standalone prompt
            return self.collab.alone_prompt(ex)
        return self.collab.finish(prompts.render(
            "flare",
            passages="\n".join(f"- {p}" for p in passages),
            question=self.task.render_question(ex),
            answer_hint=answer_hint(self.task),
        ))

    def _retrieve(self, ex: Example, c: Completion, passages: list[str], queries: list[str]) -> bool:
        """Add passages for the unsure part of `c`; False when `c` was confident, or failed
        (`c.error` set: no log-probabilities to judge by; the caller keeps that error)."""
        if c.error is not None:
            return False
        q = low_confidence_query(c.logprobs or [], self.threshold) if c.logprobs else None
        if q is None:
            return False
        query = f"{self.task.render_question(ex)} {q}"
        queries.append(query)
        for p in self.retriever.search(query, self.top_k):
            if p not in passages:
                passages.append(p)
        return True

    def answer(self, ex: Example, *, stage: str) -> dict[str, Any]:
        """One item: its final text, retrievals, queries, passages and `error`.

        A pass (look-ahead or whole answer) that returns an error (its reply unusable after
        the client's retries) ends the item: no log-probabilities means no judgement of
        confidence, so nothing is taken as "confident". The row then carries that pass's
        error (and no answer is written), so the evaluation stage stays unfinished and a
        rerun asks again (answered passes come from the cache).
        """
        passages: list[str] = []
        queries: list[str] = []
        stop = self.collab.stop_kw()
        if self.lookahead_tokens is None:
            c: Completion = self.client.complete(self.prompt(ex, passages), stage=stage, logprobs=True, **stop)
            for _ in range(self.max_steps):
                if not self._retrieve(ex, c, passages, queries):
                    break
                c = self.client.complete(self.prompt(ex, passages), stage=stage, logprobs=True, **stop)
            c = self.collab.finish_answers([self.prompt(ex, passages)], [c], stage=stage)[0]
            error = c.error
            if error is not None:
                error = f"FLARE pass {len(queries) + 1} (whole answer): {error}"
        else:
            look_error = None
            for _ in range(self.max_steps):
                look = self.client.complete(self.prompt(ex, passages), stage=stage, logprobs=True,
                                            max_tokens=self.lookahead_tokens, **stop)
                if look.error is not None:
                    look_error = f"FLARE look-ahead pass {len(queries) + 1}: {look.error}"
                    break
                if not self._retrieve(ex, look, passages, queries):
                    break
            if look_error is not None:  # no answer written on an unjudged look-ahead
                return {"text": "", "retrievals": len(queries), "queries": queries,
                        "passages": passages, "error": look_error}
            writer = self.answerer or self.collab
            c = writer.client.complete(self.prompt(ex, passages), stage=stage, **stop)
            # an answer without its answer line gets the same answer pass as every other method
            c = writer.finish_answers([self.prompt(ex, passages)], [c], stage=stage)[0]
            error = c.error if c.error is None else f"FLARE answer: {c.error}"
        return {"text": c.text, "retrievals": len(queries), "queries": queries, "passages": passages,
                "error": error}


def run_flare(spec: FlareSpec, items: Sequence[Example], *, retriever: Retriever, drafter: Collaborator,
              answerer: Collaborator, stage: str) -> list[dict[str, Any]]:
    """FLARE on each item: the rows of the evaluation stage (final text, retrievals, queries).

    Items run in a bounded thread pool of the drafter client's `concurrency` (each item's
    passes stay in order: a pass depends on the one before); rows come back in item order,
    the same whatever the pool's size. An exception of one item cancels the items not yet
    started and is raised.
    """
    from concurrent.futures import ThreadPoolExecutor, as_completed

    from tqdm.auto import tqdm

    fl = Flare.from_spec(spec, collab=drafter, retriever=retriever, answerer=answerer)

    def row(e: Example) -> dict[str, Any]:
        a = fl.answer(e, stage=stage)
        return {"id": e.id, "final": a["text"], "retrievals": a["retrievals"], "queries": a["queries"],
                "error": a["error"]}

    workers = max(1, int(getattr(drafter.client, "concurrency", 1)))
    rows: list[dict[str, Any] | None] = [None] * len(items)
    with tqdm(total=len(items), desc=f"{stage}: FLARE") as bar:
        if workers == 1 or len(items) <= 1:
            for i, e in enumerate(items):
                rows[i] = row(e)
                bar.update(1)
        else:
            ex = ThreadPoolExecutor(min(workers, len(items)), thread_name_prefix="flare")
            try:
                futures = {ex.submit(row, e): i for i, e in enumerate(items)}
                for fut in as_completed(futures):
                    rows[futures[fut]] = fut.result()
                    bar.update(1)
            finally:
                ex.shutdown(wait=True, cancel_futures=True)
    assert all(r is not None for r in rows)
    return rows  # type: ignore[return-value]


# ----------------------------------------------------------------------------- SuperICL
@dataclass
class SuperICL:
    task: Task
    client: StrongClient
    demos: list[tuple[Example, str, float]] = field(default_factory=list)  # (example, weak pred, conf)

    def _demo_block(self) -> str:
        blocks = []
        for ex, pred, conf in self.demos:
            blocks.append(
                f"Question:\n{self.task.render_question(ex)}\n"
                f"Specialist prediction: {pred} (confidence {conf:.2f})\n"
                f"Answer: {self.task.answer_text(ex)}"
            )
        return "\n\n".join(blocks)

    def prompt(self, ex: Example, prediction: str, confidence: float) -> str:
        return prompts.render(
            "supericl",
            demos=self._demo_block(),
            question=self.task.render_question(ex),
            prediction=prediction or "(none)",
            confidence=f"{confidence:.2f}",
            answer_hint=answer_hint(self.task),
        )

    def answer_many(
        self, examples: Sequence[Example], predictions: Sequence[str], confidences: Sequence[float], *, stage: str
    ) -> list[Completion]:
        return self.client.complete_many(
            [self.prompt(e, p, c) for e, p, c in zip(examples, predictions, confidences, strict=True)],
            stage=stage,
            desc=f"{stage}: SuperICL",
        )


def run_supericl(collab: Collaborator, items: Sequence[Example], *,
                 demos: Sequence[tuple[Example, str, float]], predictions: tuple[Sequence[str], Sequence[float]],
                 stage: str) -> list[dict[str, Any]]:
    """SuperICL on each item, given the weak model's (prediction, confidence) for demos and items.
    `collab` gives the task and the strong model's client, and finishes an answer cut before its
    answer line (`Collaborator.finish_answers`), as for every other method."""
    preds, confs = predictions
    sic = SuperICL(collab.task, collab.client, list(demos))
    ps = [sic.prompt(e, p, c) for e, p, c in zip(items, preds, confs, strict=True)]
    outs = collab.finish_answers(ps, sic.answer_many(items, preds, confs, stage=stage), stage=stage)
    return [{"id": e.id, "weak_pred": p, "confidence": c, "final": o.text, "error": o.error}
            for e, p, c, o in zip(items, preds, confs, outs)]
