"""The strong model's server process: llama-cpp-python's OpenAI server, with a fast logprob path.

`python -m cowest.llama_server ARGS` is `python -m llama_cpp.server ARGS` (same arguments, same
HTTP API) with one change: completions that ask for log-probabilities (FLARE) get them
without llama-cpp-python's Python-side cost. That library, for a non-streamed completion
with `logprobs`, takes a log-softmax over *every* evaluated position, prompt included, and
then sorts the whole vocabulary in Python once per generated token to find the top
alternatives (`Llama._create_completion`, llama-cpp-python 0.3.x). With Qwen2.5's 152k
vocabulary that is ~0.7 s per call plus ~0.14 s per generated token on this machine, more
than the model's own compute.

[`FastLogprobLlama`] computes the same `logprobs` object from the same scores, on the
generated positions only, with `numpy.argpartition` for the top alternatives. The values
are the library's own function (`Llama.logits_to_logprobs`) applied to the same rows, so
they are equal, not close; `tests/test_llama_server.py` holds that on a real model
(stop strings, the token limit, the end token, a reused prompt prefix, top-k > 0) against
the unpatched class. Streams and `echo=True` take the library's own path unchanged.
"""

from __future__ import annotations

from typing import Any, Iterator

import llama_cpp
import numpy as np
from llama_cpp import Llama

__all__ = ["FastLogprobLlama", "main"]


class FastLogprobLlama(Llama):
    """`llama_cpp.Llama` whose non-streamed `logprobs` are computed on the generated rows only."""

    def generate(self, *args: Any, **kwargs: Any) -> Iterator[int]:
        # Remember every sampled token and where the prompt ended: `_create_completion` keeps
        # its `completion_tokens` local, and these two give them back exactly.
        self._fast_sampled: list[int] = []
        self._fast_prompt_end: int | None = None
        for token in super().generate(*args, **kwargs):
            if self._fast_prompt_end is None:
                self._fast_prompt_end = self.n_tokens
            self._fast_sampled.append(token)
            yield token

    def _create_completion(self, *args: Any, **kwargs: Any) -> Any:
        top_k = kwargs.get("logprobs")
        if top_k is None or args or kwargs.get("stream") or kwargs.get("echo"):
            return super()._create_completion(*args, **kwargs)
        if not self._logits_all:  # the library's own error, unchanged
            return super()._create_completion(*args, **kwargs)
        return self._with_logprobs(int(top_k), kwargs)

    def _with_logprobs(self, top_k: int, kwargs: dict[str, Any]) -> Iterator[Any]:
        self._fast_sampled, self._fast_prompt_end = [], None
        chunks = list(super()._create_completion(**{**kwargs, "logprobs": None}))
        (completion,) = chunks  # a non-streamed completion is one object
        prompt = kwargs["prompt"]
        tokens = list(self._fast_sampled)
        if tokens and llama_cpp.llama_vocab_is_eog(self._model.vocab, tokens[-1]):
            tokens = tokens[:-1]  # the end token stops generation and is not part of the text
        prompt_end = self._fast_prompt_end if self._fast_prompt_end is not None else self.n_tokens
        completion["choices"][0]["logprobs"] = self._logprobs(
            tokens, token_offset=prompt_end - 1, text_offset=len(prompt), top_k=top_k)
        yield completion

    def _logprobs(self, tokens: list[int], *, token_offset: int, text_offset: int,
                  top_k: int) -> dict[str, Any]:
        """The library's `logprobs` object for `tokens`, the completion (echo off)."""
        rows = Llama.logits_to_logprobs(self._scores[token_offset:token_offset + len(tokens)])
        bos = self.token_bos()
        strs = [self.detokenize([t], prev_tokens=tokens[:i]).decode("utf-8", errors="ignore")
                for i, t in enumerate(tokens)]
        out: dict[str, list[Any]] = {"tokens": [], "text_offset": [], "token_logprobs": [],
                                     "top_logprobs": []}
        for idx, (token, token_str, row) in enumerate(zip(tokens, strs, rows)):
            if token == bos:
                continue
            out["text_offset"].append(
                text_offset + len(self.detokenize(tokens[:idx]).decode("utf-8", errors="ignore")))
            out["tokens"].append(token_str)
            out["token_logprobs"].append(row[int(token)])
            top: dict[str, Any] = {
                self.detokenize([int(i)], prev_tokens=tokens[:idx]).decode(
                    "utf-8", errors="ignore"): row[int(i)]
                for i in _top_indices(row, top_k)}
            top.update({token_str: row[int(token)]})
            out["top_logprobs"].append(top)
        return out


def _top_indices(row: np.ndarray, k: int) -> list[int]:
    """The `k` largest entries' indices in the library's order: `sorted(zip(row, range(n)),
    reverse=True)`, i.e. by value, then by index, both descending."""
    if k <= 0:
        return []
    k = min(k, row.shape[0])
    cut = np.partition(row, row.shape[0] - k)[row.shape[0] - k]
    cand = np.flatnonzero(row >= cut)  # every tie at the cut value competes
    order = np.lexsort((-cand, -row[cand]))  # last key first: value desc, then index desc
    return [int(i) for i in cand[order][:k]]


def main() -> None:
    """Run llama-cpp-python's server with [`FastLogprobLlama`] as its model class."""
    llama_cpp.Llama = FastLogprobLlama  # llama_cpp.server.model builds `llama_cpp.Llama(...)`
    from llama_cpp.server.__main__ import main as server_main

    server_main()


if __name__ == "__main__":
    main()
