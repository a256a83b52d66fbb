"""Weak-strong collaboration: the strong model alone, and the strong model refining a draft.

    z  = strong(x)       strong_alone()   zero-shot chain of thought ("GPT-4 (CoT)")
    y* = strong(x, y)    refine()         the draft y comes from any weak checkpoint/format

An output without its answer line (it reached the token limit, `max_tokens`, first, or
ended without writing it) is finished by one more short call (`StrongSpec.answer_tokens` tokens, template `strong_answer`) that
asks for the answer line, as zero-shot chain-of-thought papers extract an answer in a second
step. The item is then scored on its reasoning followed by that line, never dropped.

Both build their prompts from the templates in `cowest/prompts/` and go through a
`StrongClient`, so every call is cached, counted in the ledger, and replayable. A strong
model served in text-completion mode (a base model such as Gemma-3-270M) gets the same
instruction preceded by a few worked examples from the *training* split, since a base
model does not follow bare instructions.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Sequence

from cowest import prompts
from cowest.client import StrongClient
from cowest.replies import Completion
from cowest.tasks.base import Example, Task
from cowest.tasks.extract import has_answer_line


def answer_hint(task: Task) -> str:
    """One sentence that tells the strong model what shape the answer has."""
    info = task.info
    if info.answer_type == "choice":
        return "The answer is the letter of one option."
    if info.answer_type == "label":
        return f"The answer is exactly one of: {', '.join(info.labels or [])}."
    return "The answer is a short phrase or a number, nothing else."


def few_shot_prefix(task: Task, demos: Sequence[Example]) -> str:
    """Worked training examples for a base (non-chat) strong model."""
    blocks = [
        f"Question:\n{task.render_question(d)}\n{task.target(d, 'cot')}" for d in demos
    ]
    return "\n\n".join(blocks) + ("\n\n" if blocks else "")


def _as_completion_prompt(text: str, prefix: str) -> str:
    # the instruction, then worked examples, then the item; the model continues after "Reasoning:"
    return f"{prefix}{text}\nReasoning:"


@dataclass(frozen=True)
class Collaborator:
    """Builds prompts for one task and sends them to one strong model."""

    task: Task
    client: StrongClient
    demos: tuple[Example, ...] = ()  # only used when the client is in completion mode
    # tokens of the answer pass (the pipeline passes `StrongSpec.answer_tokens`); None: no answer pass
    answer_tokens: int | None = None

    def finish(self, text: str) -> str:
        if self.client.mode == "completion":
            return _as_completion_prompt(text, few_shot_prefix(self.task, self.demos))
        return text

    def stop_kw(self) -> dict[str, object]:
        # a base model would go on to write the next worked example
        return {"stop": ["\nQuestion:"]} if self.client.mode == "completion" else {}

    def alone_prompt(self, ex: Example) -> str:
        return self.finish(
            prompts.render(
                "strong_alone", question=self.task.render_question(ex), answer_hint=answer_hint(self.task)
            )
        )

    def refine_prompt(self, ex: Example, draft: str) -> str:
        return self.finish(
            prompts.render(
                "strong_refine",
                question=self.task.render_question(ex),
                draft=draft.strip() or "(empty draft)",
                answer_hint=answer_hint(self.task),
            )
        )

    def alone(self, examples: Sequence[Example], *, stage: str) -> list[Completion]:
        """z = strong(x) for each example (one call each, shared through the cache)."""
        ps = [self.alone_prompt(e) for e in examples]
        outs = self.client.complete_many(ps, stage=stage, desc=f"{stage}: strong alone", **self.stop_kw())
        return self.finish_answers(ps, outs, stage=stage)

    def refine(self, examples: Sequence[Example], drafts: Sequence[str], *, stage: str) -> list[Completion]:
        """y* = strong(x, y) for each (example, draft) pair."""
        if len(examples) != len(drafts):
            raise ValueError(f"{len(examples)} examples but {len(drafts)} drafts")
        ps = [self.refine_prompt(e, d) for e, d in zip(examples, drafts)]
        outs = self.client.complete_many(ps, stage=stage, desc=f"{stage}: strong refines drafts", **self.stop_kw())
        return self.finish_answers(ps, outs, stage=stage)

    def answer_prompt(self, prompt: str, partial: str) -> str:
        """The answer pass's prompt for an output `partial` of `prompt` that was cut off."""
        if self.client.mode == "completion":  # a base model continues its own text
            return f"{prompt}{partial.rstrip()}\nAnswer:"
        return prompts.render("strong_answer", prompt=prompt, partial=partial.strip(),
                              answer_hint=answer_hint(self.task))

    def finish_answers(self, ps: Sequence[str], outs: Sequence[Completion], *, stage: str) -> list[Completion]:
        """Each output without its answer line (cut by the token limit, or ended without
        writing it), followed by the answer line of one more short call (cached and counted
        like any call); the others unchanged."""
        cut = [i for i, o in enumerate(outs) if self.answer_tokens and o.ok and not has_answer_line(o.text)]
        if not cut:
            return list(outs)
        more = self.client.complete_many([self.answer_prompt(ps[i], outs[i].text) for i in cut], stage=stage,
                                         desc=f"{stage}: answer lines", max_tokens=self.answer_tokens,
                                         **self.stop_kw())
        out = list(outs)
        for i, m in zip(cut, more):
            o = outs[i]
            line = next((ln.strip() for ln in m.text.splitlines() if ln.strip()), "")
            if not has_answer_line(line):
                line = f"Answer: {line}"
            out[i] = dataclasses.replace(
                o, text=f"{o.text.rstrip()}\n{line}", prompt_tokens=o.prompt_tokens + m.prompt_tokens,
                completion_tokens=o.completion_tokens + m.completion_tokens, cached=o.cached and m.cached,
                latency_s=o.latency_s + m.latency_s, finish_reason=m.finish_reason, answer_pass=True,
                error=None if m.error is None else f"answer pass: {m.error}")
        return out
