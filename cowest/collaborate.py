"""Weak-strong collaboration: the strong model alone, and the strong model refining a draft.

    z  = strong(x)       strong_alone()   zero-shot chain of thought ("GPT-4 (CoT)")
    y* = strong(x, y)    refine()         the draft y comes from any weak checkpoint/format

Both build their prompts from the templates in `cowest/prompts/` and go through a
`StrongClient`, so every call is cached, counted in the ledger, and replayable. A strong
model served in text-completion mode (a base model such as Gemma-3-270M) gets the same
instruction preceded by a few worked examples from the *training* split, since a base
model does not follow bare instructions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from cowest import prompts
from cowest.client import StrongClient
from cowest.replies import Completion
from cowest.tasks.base import Example, Task


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
        return self.client.complete_many(
            [self.alone_prompt(e) for e in examples], stage=stage, desc=f"{stage}: strong alone", **self.stop_kw()
        )

    def refine(self, examples: Sequence[Example], drafts: Sequence[str], *, stage: str) -> list[Completion]:
        """y* = strong(x, y) for each (example, draft) pair."""
        if len(examples) != len(drafts):
            raise ValueError(f"{len(examples)} examples but {len(drafts)} drafts")
        return self.client.complete_many(
            [self.refine_prompt(e, d) for e, d in zip(examples, drafts)],
            stage=stage,
            desc=f"{stage}: strong refines drafts",
            **self.stop_kw(),
        )
