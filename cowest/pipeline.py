"""The pipeline: each step of the method as a stage with its artifacts on disk.

    data -> sft -> drafts -> preferences -> dpo -> evaluate

A `Pipeline` holds one profile's context (config, results folder, stage store, request
cache, ledger, strong-model clients and the local servers behind them). It only
orchestrates: the method's steps live in `cowest.train` (SFT, DPO), `cowest.weak`
(drafting), `cowest.collaborate` (strong alone, refinement), `cowest.preferences`
(mining), `cowest.baselines` (FLARE, SuperICL) and the task (scoring, intervals).

Each stage is stored under `runs/<stage>/<key>/`, where the key hashes exactly the inputs
that change the stage's output; the `*_inputs` methods below say what they are. A
readable alias (`runs/by-name/<stage>/<weak>/<task>/<format>/<tag>`) points to the folder.
Notebooks open a pipeline with `cowest.notebooks.open_run` and call these methods.
"""

from __future__ import annotations

import atexit
import dataclasses
import os
import random
import uuid
import warnings
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from cowest import CowestWarning, assets, prompts
from cowest.config import Profile, StrongSpec, WeakSpec, drop_late_defaults
from cowest.artifacts import Store, file_digest, read_json, read_jsonl, stable_hash, write_json, write_jsonl
from cowest.tasks import get_task
from cowest.tasks.base import Example, Task

PREF_SPLIT = "prefq"  # training-split questions held out from SFT, mined for preferences
ADAPTER_FILES = ["adapter/adapter_config.json", "adapter/adapter_model.safetensors"]
# the prompt templates each evaluated method renders (part of its stage key)
METHOD_TEMPLATES = {"weak": [], "strong": ["strong_alone", "strong_answer"],
                    "collab": ["strong_refine", "strong_answer"],
                    "flare": ["flare", "strong_alone", "strong_answer"], "supericl": ["supericl", "strong_answer"]}


@dataclass(frozen=True)
class Checkpoint:
    """A weak model state: the base model plus an adapter (None: the base model itself)."""

    weak: WeakSpec
    task: str
    fmt: str
    tag: str  # "sft", "cowest-r1", "rlwf", ...
    adapter: Path | None
    key: str  # the stage key and the adapter's content hash: what drafts from it depend on
    note: str = ""  # e.g. why a DPO stage kept its starting weights

    @property
    def id(self) -> str:
        return f"{self.weak.name}/{self.task}/{self.fmt}/{self.tag}"


@dataclass
class Result:
    """Per-item predictions of one method on one task, with metrics and intervals."""

    method: str
    task: str
    rows: list[dict[str, Any]]
    metrics: dict[str, float]

    @property
    def scores(self) -> list[float]:
        return [r["score"] for r in self.rows]


def _dump(spec: Any, **kw: Any) -> dict[str, Any]:
    return spec.model_dump(mode="json", **kw)


def _answer_span(draft: str, pred: str) -> str | None:
    """Where the weak model wrote its answer in the draft, for its confidence: the draft's
    answer segment ("Answer: 30 mg" -> "30 mg"; a choice scored by its content extracts as a
    letter the draft never wrote), else the extracted answer as a whole word; None when
    neither is in the draft verbatim (no answer: confidence 0)."""
    import re

    from cowest.tasks.extract import answer_segment

    if not pred:
        return None
    seg = answer_segment(draft)
    if seg and seg in draft:
        return seg
    return pred if re.search(rf"(?<!\w){re.escape(pred)}(?!\w)", draft) else None


def _items_hash(items: Sequence[Example]) -> str:
    return stable_hash([dataclasses.asdict(e) for e in items])


class Pipeline:
    """One profile's run context. Use as a context manager or call `close()`.

    `force`: False reuses finished stages; True rebuilds each stage once in this process;
    a string is a token shared by several processes (the notebook runner's `--force`), so
    a stage that several notebooks ask for is rebuilt once per forced run.
    """

    def __init__(self, profile: Profile, *, results: Path, force: bool | str = False):
        from cowest.cache import RequestCache
        from cowest.ledger import Ledger

        self.cfg = profile
        self.root = Path(results) / profile.name
        token = (uuid.uuid4().hex if force is True else force) or None
        self.store = Store(self.root / "runs", force=token)
        self.tables = self.root / "tables"
        self.figures = self.root / "figures"
        for d in (self.store.root, self.tables, self.figures):
            d.mkdir(parents=True, exist_ok=True)
        db = self.root / "cache.sqlite"
        self.cache = RequestCache(db, mode=profile.cache_mode)
        self.ledger = Ledger(db, budget_usd=profile.budget_usd)
        self._tasks: dict[str, Task] = {}
        self._tokenizers: dict[str, Any] = {}
        self._clients: dict[str, Any] = {}
        self._servers = ExitStack()
        self._inference: tuple[tuple[Any, ...], tuple[Any, Any]] | None = None  # see weak_for_inference
        atexit.register(self.close)

    # -- context ---------------------------------------------------------------------
    def __enter__(self) -> "Pipeline":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop every local server this pipeline started, and drop the weak model kept for inference."""
        self._servers.close()
        self._clients.clear()
        self._inference = None

    def weak_for_inference(self, ckpt: Checkpoint) -> tuple[Any, Any]:
        """``load_weak`` of a checkpoint for inference (model, tokenizer), keeping the last one.

        The stages of one checkpoint run one after another (SuperICL: the demonstrations'
        drafts, then two confidence stages): they load it once. One model is kept, and it is
        dropped before training (:meth:`sft`, :meth:`dpo`) and by :meth:`close`. Inference
        never changes it (``generate`` and the confidences run under ``torch.inference_mode``).
        """
        from cowest.weak import load_weak

        w = ckpt.weak
        key = (self.weak_identity(w), w.quantization, ckpt.key, str(ckpt.adapter))
        if self._inference is None or self._inference[0] != key:
            self._inference = None  # the previous model is freed before the next one loads
            self._inference = (key, load_weak(self.weak_base(w), quantization=w.quantization, adapter=ckpt.adapter,
                                              revision=w.revision))
        return self._inference[1]

    # -- tasks and data --------------------------------------------------------------
    def task(self, name: str) -> Task:
        if name not in self._tasks:
            self._tasks[name] = get_task(name, **self.cfg.task(name).params)
        return self._tasks[name]

    def data_inputs(self, task_name: str) -> dict[str, Any]:
        # the task's own strong model and DPO seeds don't change its data; n_queries is its own entry.
        # The generator's version enters from version 2 on (the keys of version-1 data predate it).
        inputs = {"task": _dump(self.cfg.task(task_name), exclude={"strong", "dpo_seeds", "n_queries"}),
                  "n_queries": self.cfg.n_queries(task_name), "seed": self.cfg.seed}
        version = self.task(task_name).generator_version
        return inputs if version == 1 else {**inputs, "generator_version": version}

    def data(self, task_name: str) -> dict[str, list[Example]]:
        """train (SFT), prefq (held-out training questions for preferences), validation, test."""
        spec = self.cfg.task(task_name)
        task = self.task(task_name)
        n_pref = self.cfg.n_queries(task_name)

        def build(folder: Path) -> None:
            train = task.load("train", spec.n_train + n_pref, self.cfg.seed)
            if len(train) < spec.n_train + n_pref:
                raise ValueError(
                    f"{task_name}: the train split has {len(train)} items, but n_train + n_queries "
                    f"= {spec.n_train + n_pref}; lower them in {self.cfg.source}"
                )
            splits = {
                "train": train[: spec.n_train],
                PREF_SPLIT: train[spec.n_train :],
                "validation": task.load("validation", spec.n_validation, self.cfg.seed),
                "test": task.load("test", spec.n_test, self.cfg.seed),
            }
            for name, items in splits.items():
                write_jsonl(folder / f"{name}.jsonl", [dataclasses.asdict(e) for e in items])

        folder = self.store.stage("data", self.data_inputs(task_name), build, alias=task_name,
                                  outputs=[f"{s}.jsonl" for s in ("train", PREF_SPLIT, "validation", "test")])
        return {p.stem: [Example(**d) for d in read_jsonl(p)] for p in sorted(folder.glob("*.jsonl"))}

    # -- models ----------------------------------------------------------------------
    @staticmethod
    def weak_base(weak: WeakSpec) -> str:
        """A local folder for offline assets; otherwise the hub id or path as given."""
        return str(assets.hf_folder(weak.model)) if weak.model in assets.ASSETS else weak.model

    def weak_identity(self, weak: WeakSpec) -> dict[str, Any]:
        """`model_identity` of a weak model, with its hub revision when one is pinned."""
        ident = self.model_identity(weak.model)
        return {**ident, "revision": weak.revision} if weak.revision and "model" in ident else ident

    @staticmethod
    def model_identity(model: str) -> dict[str, Any]:
        """What names a model's weights: the pinned sha256 of an offline asset; for a local
        folder, the content of its config and tokenizer files and the names and sizes of its
        weight files (not its path); otherwise the hub id."""
        if model in assets.ASSETS:
            return {"asset": model, "sha256": assets.get_asset(model).sha256}
        folder = Path(model)
        if folder.is_dir():
            files = sorted(p for p in folder.rglob("*") if p.is_file())
            small = {p.relative_to(folder).as_posix(): file_digest(p) for p in files
                     if p.suffix in (".json", ".model", ".txt", ".jinja")}
            weights = {p.relative_to(folder).as_posix(): p.stat().st_size for p in files
                       if p.suffix in (".safetensors", ".bin", ".pt", ".gguf")}
            return {"folder": folder.name, "files": small, "weights": weights}
        return {"model": model}

    def weak_prompts(self, weak: WeakSpec, task: Task, examples: Sequence[Example], fmt: str) -> list[str]:
        from cowest.weak import load_tokenizer, render_prompt

        base = self.weak_base(weak)
        if base not in self._tokenizers:  # every stage renders prompts: load each tokenizer once
            self._tokenizers[base] = load_tokenizer(base, weak.revision)
        tok = self._tokenizers[base]
        return [render_prompt(tok, prompts.render(f"weak_{fmt}", question=task.render_question(e))) for e in examples]

    def strong(self, name: str | None = None, *, logprobs: bool = False) -> Any:
        """The client for a strong model of the profile.

        A local model's llama.cpp servers (`servers` of them) start at the client's first cache
        miss, so a fully cached run starts none. FLARE, the one caller that needs token
        log-probabilities, gets its own pool (`logprobs=True`, llama.cpp's `logits_all`, slower
        per call); everyone else a fast one.
        """
        from cowest.client import StrongClient
        from cowest.server import ServerPool

        spec: StrongSpec = self.cfg.strong_model(name) if name else self.cfg.strong
        handle = spec.name + ("+logprobs" if logprobs and spec.backend == "local" else "")
        if handle not in self._clients:
            endpoint: Any = spec.base_url
            if spec.backend == "local":
                endpoint = ServerPool.from_spec(spec, logits_all=logprobs, log_path=self.root / f"server-{handle}.log")
                self._servers.callback(endpoint.stop)
            self._clients[handle] = StrongClient.from_spec(spec, endpoint=endpoint, cache=self.cache, ledger=self.ledger)
        return self._clients[handle]

    def collaborator(self, task_name: str, strong: str | None = None, *, logprobs: bool = False) -> Any:
        from cowest.collaborate import Collaborator

        client = self.strong(strong, logprobs=logprobs)
        spec = self.cfg.strong_model(strong) if strong else self.cfg.strong
        return Collaborator(self.task(task_name), client, self._demos(task_name, client.mode),
                            answer_tokens=spec.answer_tokens)

    def _demos(self, task_name: str, mode: str) -> tuple[Example, ...]:
        # a base model served in completion mode gets worked examples, from the training split only
        return tuple(self.data(task_name)["train"][:3]) if mode == "completion" else ()

    def strong_inputs(self, name: str) -> dict[str, Any]:
        """A strong model as a stage input: the settings that shape its replies, and its weights.

        Left out: the label, and what changes how or at what price a reply is fetched, not
        what it says (servers, threads, concurrency, timeout, retries, prices, the key's variable
        name; llama.cpp gave the same 20 of 20 answers with 1 and 2 threads).
        """
        spec = self.cfg.strong_model(name)
        not_output = {"name", "concurrency", "servers", "n_threads", "timeout_s", "max_retries", "price_in_per_mtok",
                      "price_out_per_mtok", "free", "api_key_env", "stands_in_for"}
        return {**_dump(spec, exclude=not_output & set(type(spec).model_fields)),
                "weights": self.model_identity(spec.model) if spec.backend == "local" else None}

    # -- SFT -------------------------------------------------------------------------
    def sft_rows(self, task_name: str, weak: WeakSpec, fmt: str) -> list[dict[str, str]]:
        task = self.task(task_name)
        items = task.sft_examples(self.data(task_name)["train"])
        return [{"prompt": p, "completion": task.target(e, fmt)}
                for p, e in zip(self.weak_prompts(weak, task, items, fmt), items)]

    def sft_inputs(self, task_name: str, weak: WeakSpec, fmt: str) -> dict[str, Any]:
        lora = _dump(weak.lora)
        if lora["dropout"] == 0:  # no dropout, no mask to draw: the sampler changes nothing
            lora["dropout_sampler"] = "torch"
        return {"rows": stable_hash(self.sft_rows(task_name, weak, fmt)), "base": self.weak_identity(weak),
                "quantization": weak.quantization, "lora": drop_late_defaults("lora", lora),
                "sft": _dump(weak.sft), "seed": self.cfg.seed}

    def sft(self, task_name: str, weak: WeakSpec | None = None, fmt: str | None = None) -> Checkpoint:
        """Supervised fine-tuning (LoRA or QLoRA) on the task's training split."""
        from cowest import train

        weak = weak or self.cfg.weak
        fmt = fmt or self.cfg.collab.format

        def build(folder: Path) -> None:
            self._inference = None  # free the inference model before training
            train.sft(self.weak_base(weak), self.sft_rows(task_name, weak, fmt), folder / "adapter",
                      weak=weak, seed=self.cfg.seed, checkpoints=folder / "checkpoints",
                      on_trainer=self._progress("sft"))

        folder = self.store.stage("sft", self.sft_inputs(task_name, weak, fmt), build, outputs=ADAPTER_FILES,
                                  alias=f"{weak.name}/{task_name}/{fmt}/sft")
        return self._checkpoint(weak, task_name, fmt, "sft", folder)

    def _progress(self, kind: str) -> Callable[[Any], None]:
        """`on_trainer` for `train.sft` / `train.dpo`: the trainer's logged steps go to the stage
        journal, which the runner prints as progress lines."""
        from cowest import train

        return lambda trainer: trainer.add_callback(
            train.progress_callback(kind, lambda text: self.store.progress(kind, text)))

    def _checkpoint(self, weak: WeakSpec, task: str, fmt: str, tag: str, folder: Path) -> Checkpoint:
        adapter = folder / "adapter"
        key = stable_hash([folder.name, file_digest(adapter / "adapter_model.safetensors")])
        return Checkpoint(weak, task, fmt, tag, adapter, key)

    def sft_log(self, ckpt: Checkpoint) -> dict[str, Any]:
        assert ckpt.adapter is not None
        return read_json(ckpt.adapter / "train_log.json")

    # -- weak generation -------------------------------------------------------------
    def drafts_inputs(self, ckpt: Checkpoint, examples: Sequence[Example], k: int, temperature: float) -> dict[str, Any]:
        w = ckpt.weak
        out = {"checkpoint": ckpt.key, "base": self.weak_identity(w), "quantization": w.quantization,
               "prompts": stable_hash(self.weak_prompts(w, self.task(ckpt.task), examples, ckpt.fmt)),
               "ids": [e.id for e in examples], "k": k, "temperature": temperature,
               "max_new_tokens": w.max_new_tokens, "gen_batch_size": w.gen_batch_size, "seed": self.cfg.seed}
        if w.draft_server is not None:  # another engine, other numerics: other drafts
            out["server"] = _dump(w.draft_server, exclude={"concurrency", "n_threads", "api_key_env"})
        return out

    def drafts(
        self, ckpt: Checkpoint, examples: Sequence[Example], *, k: int = 1, temperature: float = 0.0
    ) -> list[list[str]]:
        """k drafts per example from a weak checkpoint (greedy when temperature is 0)."""
        from cowest.weak import generate

        weak = ckpt.weak

        def build(folder: Path) -> int:
            ps = self.weak_prompts(weak, self.task(ckpt.task), examples, ckpt.fmt)
            if weak.draft_server is not None:
                outs, failed = self._server_drafts(ckpt, ps, k, temperature, folder)
            else:
                model, tok = self.weak_for_inference(ckpt)
                outs = generate(model, tok, ps, max_new_tokens=weak.max_new_tokens, temperature=temperature,
                                num_samples=k, seed=self.cfg.seed, batch_size=weak.gen_batch_size,
                                desc=f"drafts {ckpt.id}")
                failed = 0
            write_jsonl(folder / "drafts.jsonl", [{"id": e.id, "drafts": o} for e, o in zip(examples, outs)])
            return failed

        folder = self.store.stage("drafts", self.drafts_inputs(ckpt, examples, k, temperature), build,
                                  outputs=["drafts.jsonl"])
        return [r["drafts"] for r in read_jsonl(folder / "drafts.jsonl")]

    def _server_drafts(self, ckpt: Checkpoint, prompts: list[str], k: int, temperature: float,
                       folder: Path) -> tuple[list[list[str]], int]:
        """Drafts from `weak.draft_server` through a `StrongClient` (the request cache and the
        ledger included): k samples per prompt (`sample_index` 0..k-1), completion mode on the
        rendered prompt. Returns the drafts and how many requests failed (their text is empty)."""
        import httpx

        from cowest.client import StrongClient
        from cowest.config import StrongSpec
        from cowest.server import LocalServer, ServerPool

        weak, ds = ckpt.weak, ckpt.weak.draft_server
        assert ds is not None
        adapter_id = file_digest(ckpt.adapter / "adapter_model.safetensors") if ckpt.adapter else "none"
        if ds.base_url is None:
            if weak.model not in assets.ASSETS:
                raise ValueError(f"weak model {weak.name}: a local llama.cpp draft server needs an offline GGUF "
                                 f"model (cowest.assets), not {weak.model!r}; set draft_server.base_url to a vLLM server")
            extra: list[str] = []
            if ckpt.adapter is not None:
                from cowest.lora_gguf import peft_to_gguf

                lora = peft_to_gguf(ckpt.adapter, assets.gguf_path(weak.model), folder / "adapter.gguf")
                extra = ["--lora_path", str(lora)]
            server = LocalServer(assets.gguf_path(weak.model), alias=weak.model, n_threads=ds.n_threads,
                                 n_ctx=ds.n_ctx, logits_all=False, log_path=self.root / f"server-{weak.name}-drafts.log",
                                 extra_args=extra, sha256=f"{assets.get_asset(weak.model).sha256}+lora:{adapter_id}")
            endpoint: Any = ServerPool([server])
            spec = StrongSpec(name=f"{weak.name}-drafts", model=weak.model, backend="local", mode="completion",
                              max_tokens=weak.max_new_tokens, temperature=temperature, n_threads=ds.n_threads,
                              n_ctx=ds.n_ctx, concurrency=ds.concurrency)
        else:
            name = f"{weak.name}-{adapter_id}"
            if ckpt.adapter is not None:  # vLLM: load the adapter under a name that is its content hash
                key = os.environ.get(ds.api_key_env or "", "")
                r = httpx.post(ds.base_url.rstrip("/") + "/load_lora_adapter", timeout=120,
                               json={"lora_name": name, "lora_path": str(ckpt.adapter.resolve())},
                               headers={"Authorization": f"Bearer {key}"} if key else {})
                if r.status_code >= 400 and "already" not in r.text:
                    raise RuntimeError(f"{ds.base_url} refused the adapter {ckpt.adapter}: {r.text[:300]}")
            endpoint = ds.base_url
            spec = StrongSpec(name=f"{weak.name}-drafts", model=name if ckpt.adapter else weak.model, backend="api",
                              base_url=ds.base_url, api_key_env=ds.api_key_env, mode="completion",
                              max_tokens=weak.max_new_tokens, temperature=temperature, concurrency=ds.concurrency,
                              free=True)
        client = StrongClient.from_spec(spec, endpoint=endpoint, cache=self.cache, ledger=self.ledger)
        try:
            n = 1 if temperature == 0 else k
            outs = client.complete_many([p for p in prompts for _ in range(n)], stage=f"drafts:{ckpt.id}",
                                        sample_indices=[i for _ in prompts for i in range(n)],
                                        desc=f"drafts {ckpt.id} (server)")
        finally:
            if hasattr(endpoint, "stop"):
                endpoint.stop()
        texts = [o.text or "" for o in outs]
        failed = sum(o.error is not None for o in outs)
        grouped = [texts[i * n:(i + 1) * n] for i in range(len(prompts))]
        return [g * k if n == 1 else g for g in grouped], failed

    # -- preferences -----------------------------------------------------------------
    def judge_for(self, task_name: str) -> StrongSpec:
        """The judge: `collab.judge` if set, else the task's strong model (as in the paper)."""
        c = self.cfg.collab
        return self.cfg.strong_model(c.judge) if c.judge else self.cfg.strong_for(task_name)

    def evaluator(self, name: str | None = None, task_name: str | None = None) -> Any:
        from cowest.preferences import GoldEvaluator, LLMJudge

        name = name or self.cfg.collab.evaluator
        if name == "gold":
            return GoldEvaluator()
        if task_name is None:
            raise ValueError("the llm_judge evaluator needs the task name (its judge may depend on it)")
        return LLMJudge(self.strong(self.judge_for(task_name).name))

    def pref_queries(self, task_name: str, n_queries: int | None = None) -> list[Example]:
        """The mined queries: the held-out training questions, or their first `n_queries`."""
        return self.data(task_name)[PREF_SPLIT][:n_queries]

    def preferences_inputs(self, ckpt: Checkpoint, feedback: str, evaluator: str, strong: str | None,
                           n_queries: int | None = None) -> dict[str, Any]:
        c = self.cfg.collab
        qs = self.pref_queries(ckpt.task, n_queries)
        judge = self.judge_for(ckpt.task).name if evaluator == "llm_judge" else None
        templates = (["strong_alone", "strong_refine", "strong_answer"] if feedback == "collab" else []) + (
            ["judge"] if judge else [])
        return {"drafts": self.store.key("drafts", self.drafts_inputs(ckpt, qs, c.k, c.temperature)),
                "queries": _items_hash(qs), "feedback": feedback, "evaluator": evaluator,
                "strong": self.strong_inputs(strong) if strong else None,
                "demos": _items_hash(self._demos(ckpt.task, self.cfg.strong_model(strong).mode)) if strong else None,
                "judge": self.strong_inputs(judge) if judge else None, "templates": prompts.digest(*templates),
                "pairing": c.pairing, "max_pairs_per_query": c.max_pairs_per_query, "seed": self.cfg.seed}

    def preferences(
        self, ckpt: Checkpoint, *, feedback: str = "collab", evaluator: str | None = None, strong: str | None = None,
        n_queries: int | None = None,
    ) -> dict[str, Any]:
        """Mine preference pairs on the held-out training questions (the first `n_queries` of
        them when given: the ablations' smaller mining, `ablations.n_queries`).

        feedback="collab" is CoWest (drafts judged by what the strong model makes of them);
        feedback="single" is our RLWF (drafts judged on their own; no strong-model call).
        Returns {"records", "pairs", "stats", "key"}.
        """
        from cowest.preferences import mine

        c = self.cfg.collab
        evaluator = evaluator or c.evaluator
        strong_name = (strong or self.cfg.strong_for(ckpt.task).name) if feedback == "collab" else None
        tag = f"{feedback}-{evaluator}" + (f"-{strong}" if strong else "")
        tag += f"-q{n_queries}" if n_queries is not None else ""
        inputs = self.preferences_inputs(ckpt, feedback, evaluator, strong_name, n_queries)

        def build(folder: Path) -> int:
            qs = self.pref_queries(ckpt.task, n_queries)
            drafts = self.drafts(ckpt, qs, k=c.k, temperature=c.temperature)
            records, pairs, stats = mine(
                self.task(ckpt.task), qs, drafts, self.weak_prompts(ckpt.weak, self.task(ckpt.task), qs, ckpt.fmt),
                self.evaluator(evaluator, ckpt.task),
                collaborator=self.collaborator(ckpt.task, strong_name) if strong_name else None,
                pairing=c.pairing, max_pairs=c.max_pairs_per_query, seed=self.cfg.seed, stage=f"prefs:{tag}")
            write_jsonl(folder / "records.jsonl", records)
            write_jsonl(folder / "pairs.jsonl", [p.to_dict() for p in pairs])
            write_json(folder / "stats.json", stats)
            return stats["failed"]

        folder = self.store.stage("prefs", inputs, build, outputs=["records.jsonl", "pairs.jsonl", "stats.json"],
                                  alias=f"{ckpt.id}/{tag}")
        return {"records": read_jsonl(folder / "records.jsonl"), "pairs": read_jsonl(folder / "pairs.jsonl"),
                "stats": read_json(folder / "stats.json"), "key": folder.name}

    # -- DPO -------------------------------------------------------------------------
    def dpo_pairs(self, prefs: dict[str, Any], volume: int | None) -> list[dict[str, str]]:
        """The pairs DPO trains on; with ``volume``, the first ``volume`` of one seeded shuffle
        of the pool, so that smaller volumes are subsets of larger ones (nested)."""
        pairs = prefs["pairs"]
        if volume is not None:
            order = list(pairs)
            random.Random(self.cfg.seed).shuffle(order)
            pairs = order[: min(volume, len(order))]
        return [{"prompt": p["prompt"], "chosen": p["chosen"], "rejected": p["rejected"]} for p in pairs]

    def dpo_inputs(self, start: Checkpoint, pairs: list[dict[str, str]], seed: int) -> dict[str, Any]:
        w = start.weak
        return {"start": start.key, "pairs": stable_hash(pairs), "base": self.weak_identity(w),
                "quantization": w.quantization, "dpo": _dump(w.dpo), "seed": seed}

    def dpo_seeds(self, task_name: str) -> list[int]:
        """The seeds of a task's main-table DPO runs: ``seed``, ``seed + 1``, ... (the task's
        ``dpo_seeds``, else ``collab.dpo_seeds``, of them)."""
        return [self.cfg.seed + i for i in range(self.cfg.n_dpo_seeds(task_name))]

    def dpo(self, start: Checkpoint, prefs: dict[str, Any], *, tag: str, volume: int | None = None,
            seed: int | None = None) -> Checkpoint:
        """DPO from `start` (its adapter is both the starting point and the frozen reference).

        ``seed`` (default: the profile's) seeds training: the order of the pairs and LoRA's
        dropout. The start and the pairs are the same for every seed, so seeds measure how
        much one DPO run varies by chance alone."""
        from cowest import train

        weak = start.weak
        seed = self.cfg.seed if seed is None else seed
        if seed != self.cfg.seed:
            tag = f"{tag}-seed{seed}"
        pairs = self.dpo_pairs(prefs, volume)
        if not pairs:
            # Nothing to align on: say so loudly and keep the starting weights (the same key, so
            # its drafts are the start's); every table that uses it can show the note.
            failed = prefs.get("stats", {}).get("failed", 0)
            why = (f"{failed} strong-model replies failed (the next run asks again)" if failed else
                   "every mined query had only positive or only negative drafts")
            note = (f"no preference pairs for {start.id} ({tag}): {why}, so DPO did not run and the starting "
                    "weights are kept. Raise collab.k, collab.temperature or collab.n_queries.")
            warnings.warn(note, CowestWarning, stacklevel=2)
            return dataclasses.replace(start, tag=tag, note=note)

        def build(folder: Path) -> None:
            self._inference = None  # free the inference model before training
            train.dpo(self.weak_base(weak), start.adapter, pairs, folder / "adapter", weak=weak, seed=seed,
                      checkpoints=folder / "checkpoints", on_trainer=self._progress("dpo"))

        folder = self.store.stage("dpo", self.dpo_inputs(start, pairs, seed), build, outputs=ADAPTER_FILES,
                                  alias=f"{weak.name}/{start.task}/{start.fmt}/{tag}")
        return self._checkpoint(weak, start.task, start.fmt, tag, folder)

    def cowest(
        self, task_name: str, *, weak: WeakSpec | None = None, fmt: str | None = None, rounds: int = 1,
        evaluator: str | None = None, strong: str | None = None, volume: int | None = None,
        seed: int | None = None, n_queries: int | None = None,
    ) -> list[Checkpoint]:
        """SFT, then `rounds` rounds of (mine collaborative preferences -> DPO). One checkpoint per round.
        ``seed``: the DPO seed (default the profile's; see :meth:`dpo_seeds`); ``n_queries``: mine
        only the first queries (the ablations' `cfg.ablation_queries`; default all)."""
        ckpt = self.sft(task_name, weak, fmt)
        out = []
        suffix = "".join(f"-{k}{v}" for k, v in [("", evaluator), ("s-", strong), ("v", volume), ("q", n_queries)]
                         if v is not None)
        for r in range(1, rounds + 1):
            prefs = self.preferences(ckpt, evaluator=evaluator, strong=strong, n_queries=n_queries)
            ckpt = self.dpo(ckpt, prefs, tag=f"cowest-r{r}{suffix}", volume=volume, seed=seed)
            out.append(ckpt)
        return out

    def rlwf(self, task_name: str, *, weak: WeakSpec | None = None, fmt: str | None = None,
             seed: int | None = None) -> Checkpoint:
        """RLWF as we define it: DPO on single-model feedback (drafts scored on their own)."""
        sft = self.sft(task_name, weak, fmt)
        return self.dpo(sft, self.preferences(sft, feedback="single"), tag="rlwf", seed=seed)

    # -- the division-of-labour gates (validation items only) ---------------------------
    def gate_items(self, task_name: str) -> dict[str, list[Example]]:
        """The validation items of each gate (`cowest.gates`): held-out recall questions,
        items with their facts stated, and items that have a right-fact, wrong-step draft."""
        task = self.task(task_name)
        n = self.cfg.gates.n_items
        val = self.data(task_name)["validation"][:n]
        given = [g for g in (task.with_facts(e) for e in val) if g is not None]
        # recall: every fact in its first held-out wording, then the second..., capped at n_items
        recall = sorted(task.recall_items("validation"), key=lambda e: int(e.id.rsplit("-", 1)[1]))
        return {"recall": recall[:n], "fact_given": given,
                "draft_use": [e for e in val if task.wrong_step_draft(e) is not None]}

    def gate_rows(self, task_name: str, strong: str | None = None, ckpt: Checkpoint | None = None
                  ) -> tuple[dict[str, list[dict[str, Any]]], dict[str, list[Example]]]:
        """The model outputs the gates score: the SFT weak model's greedy drafts (recall and
        fact-given items; cached drafts stages) and the strong model's answers (fact-given
        items alone; refinements of the wrong-step drafts; cached calls). A failed call
        leaves an empty text, which no gate counts as right."""
        task = self.task(task_name)
        ckpt = ckpt or self.sft(task_name)
        strong = strong or self.cfg.strong_for(task_name).name
        items = self.gate_items(task_name)
        col = self.collaborator(task_name, strong)
        rec = [d[0] for d in self.drafts(ckpt, items["recall"])] if items["recall"] else []
        weak_given = [d[0] for d in self.drafts(ckpt, items["fact_given"])] if items["fact_given"] else []
        strong_given = col.alone(items["fact_given"], stage=f"gates:{strong}") if items["fact_given"] else []
        wrong = [task.wrong_step_draft(e) or "" for e in items["draft_use"]]
        refined = col.refine(items["draft_use"], wrong, stage=f"gates:{strong}") if wrong else []
        rows = {
            "recall": [{"id": e.id, "draft": d} for e, d in zip(items["recall"], rec)],
            "fact_given": [{"id": e.id, "strong": o.text or "", "weak": w, "error": o.error}
                           for e, o, w in zip(items["fact_given"], strong_given, weak_given)],
            "draft_use": [{"id": e.id, "draft": d, "final": o.text or "", "error": o.error}
                          for e, d, o in zip(items["draft_use"], wrong, refined)],
        }
        return rows, items

    def gates(self, task_name: str, strong: str | None = None) -> list[Any]:
        """The four gates of one task with one strong model (`cowest.gates.evaluate`);
        recorded in ``gates.json`` (the runner copies it into the manifest)."""
        from cowest import gates

        strong = strong or self.cfg.strong_for(task_name).name
        rows, items = self.gate_rows(task_name, strong)
        results = gates.evaluate(self.task(task_name), rows, items, self.cfg.gates)
        self.record_gates(results, strong)
        return results

    def weak_knowledge_gate(self, task_name: str) -> Any:
        """The weak-knowledge gate alone (no strong model): the SFT model on held-out recall questions."""
        from cowest import gates

        task = self.task(task_name)
        items = self.gate_items(task_name)["recall"]
        drafts = [d[0] for d in self.drafts(self.sft(task_name), items)] if items else []
        result = gates.weak_knowledge(task, items, drafts, self.cfg.gates.weak_knowledge)
        self.record_gates([result], None)
        return result

    def record_gates(self, results: Sequence[Any], strong: str | None) -> None:
        """Merge gate results into ``<results>/<profile>/gates.json``, one entry per
        (task, gate, strong model); the weak-knowledge gate does not depend on the strong model."""
        path = self.root / "gates.json"
        have = {(g["task"], g["gate"], g.get("strong")): g for g in (read_json(path) if path.exists() else [])}
        for r in results:
            who = None if r.gate == "weak_knowledge" else strong
            have[(r.task, r.gate, who)] = {**r.to_dict(), "strong": who}
        write_json(path, sorted(have.values(), key=lambda g: (g["task"], g["gate"], g["strong"] or "")))

    def premise(self, tasks: Sequence[str] | None = None) -> str | None:
        """The sentence the verdicts on `tasks` (default: every task) carry when a gate recorded
        for their strong model failed; None when every applicable gate passed on them. When
        some of `tasks` passed, the sentence names them too."""
        from cowest.gates import GateResult, premise_note

        path = self.root / "gates.json"
        if not path.exists():
            return None
        names = list(tasks) if tasks is not None else [t.name for t in self.cfg.tasks]
        used = {(t, self.cfg.strong_for(t).name) for t in names}
        rows = [GateResult(**{k: v for k, v in g.items() if k != "strong"}) for g in read_json(path)
                if (g["strong"] is None and g["task"] in names) or (g["task"], g["strong"]) in used]
        note = premise_note(rows)
        measured, failed = {r.task for r in rows}, {r.task for r in rows if r.passed is False}
        passed = [t for t in names if t in measured - failed]
        if note and passed:
            note += f" Every applicable gate passed on {', '.join(passed)}."
        return note

    # -- evaluation ------------------------------------------------------------------
    def test_items(self, task_name: str, n: int | None = None) -> list[Example]:
        items = self.data(task_name)["test"]
        return items[:n] if n else items

    def evaluate_inputs(self, method: str, task_name: str, items: Sequence[Example], ckpt: Checkpoint | None,
                        strong: str | None) -> dict[str, Any]:
        b = self.cfg.baselines
        settings = {"flare": _dump(b.flare), "supericl": _dump(b.supericl)}.get(method)
        demos = None
        if method == "supericl":
            demos = _items_hash(self.data(task_name)["train"][: b.supericl.n_demos])
        elif strong:
            demos = _items_hash(self._demos(task_name, self.cfg.strong_model(strong).mode))
        return {"method": method, "checkpoint": ckpt.key if ckpt else None, "items": _items_hash(items),
                "weak": ({"max_new_tokens": ckpt.weak.max_new_tokens, "gen_batch_size": ckpt.weak.gen_batch_size,
                          "fmt": ckpt.fmt, "prompt": prompts.digest(f"weak_{ckpt.fmt}")} if ckpt else None),
                "strong": self.strong_inputs(strong) if strong else None, "demos": demos,
                "templates": prompts.digest(*METHOD_TEMPLATES[method]), "settings": settings,
                "seed": self.cfg.seed}

    def evaluate(
        self, method: str, task_name: str, *, ckpt: Checkpoint | None = None, strong: str | None = None,
        n: int | None = None, label: str | None = None,
    ) -> Result:
        """Run one method on the test split and score it.

        method: "weak" (ckpt alone), "strong" (strong alone, CoT), "collab" (ckpt drafts,
        strong refines: CoWest when ckpt is aligned, standard refinement when it is SFT),
        "flare", "supericl" (ckpt gives predictions and confidences).
        """
        if method not in METHOD_TEMPLATES:
            raise ValueError(f"unknown method {method!r} (use one of {sorted(METHOD_TEMPLATES)})")
        if method in ("weak", "collab", "supericl") and ckpt is None:
            raise ValueError(f"method {method!r} needs a weak checkpoint")
        task = self.task(task_name)
        items = self.test_items(task_name, n)
        strong_name = (strong or self.cfg.strong_for(task_name).name) if method != "weak" else None
        label = label or method

        def build(folder: Path) -> int:
            rows = self._predict(method, task_name, items, ckpt, strong_name, stage=f"eval:{label}")
            write_jsonl(folder / "predictions.jsonl",
                        [{**r, **task.score_row(r["final"], e)} for r, e in zip(rows, items)])
            return sum(r.get("error") is not None for r in rows)

        folder = self.store.stage(
            "eval", self.evaluate_inputs(method, task_name, items, ckpt, strong_name), build,
            outputs=["predictions.jsonl"],
            alias=f"{task_name}/{label}/{ckpt.weak.name if ckpt else '-'}/{strong_name or '-'}/n{len(items)}")
        rows = read_jsonl(folder / "predictions.jsonl")
        # a failed strong-model call is not a wrong answer: metrics cover the items that were answered,
        # `failed` counts the others (the stage stays unfinished, and the next run asks again)
        ok = [(r, e) for r, e in zip(rows, items) if r.get("error") is None]
        metrics = task.evaluate_rows([r for r, _ in ok], [e for _, e in ok], seed=self.cfg.seed)
        metrics["failed"] = len(rows) - len(ok)
        return Result(label, task_name, [r for r, _ in ok], metrics)

    def _predict(
        self, method: str, task_name: str, items: list[Example], ckpt: Checkpoint | None, strong: str | None,
        *, stage: str,
    ) -> list[dict[str, Any]]:
        from cowest import baselines

        if method == "strong":
            outs = self.collaborator(task_name, strong).alone(items, stage=stage)
            return [{"id": e.id, "final": o.text, "error": o.error, "answer_pass": o.answer_pass}
                    for e, o in zip(items, outs)]
        if method == "flare":
            task = self.task(task_name)
            return baselines.run_flare(
                self.cfg.baselines.flare, items, retriever=baselines.Retriever(task.corpus()),
                drafter=self.collaborator(task_name, strong, logprobs=True),
                answerer=self.collaborator(task_name, strong), stage=stage)
        assert ckpt is not None
        if method == "supericl":
            n_demos = self.cfg.baselines.supericl.n_demos
            demos = self.data(task_name)["train"][:n_demos]
            return baselines.run_supericl(self.collaborator(task_name, strong), items, stage=stage,
                                          demos=list(zip(demos, *self._weak_predictions(ckpt, demos))),
                                          predictions=self._weak_predictions(ckpt, items))
        drafts = [d[0] for d in self.drafts(ckpt, items)]
        if method == "weak":
            return [{"id": e.id, "draft": d, "final": d} for e, d in zip(items, drafts)]
        outs = self.collaborator(task_name, strong).refine(items, drafts, stage=stage)
        return [{"id": e.id, "draft": d, "final": o.text, "error": o.error, "answer_pass": o.answer_pass}
                for e, d, o in zip(items, drafts, outs)]

    def _weak_predictions(self, ckpt: Checkpoint, items: Sequence[Example]) -> tuple[list[str], list[float]]:
        """The weak model's greedy answer and its confidence (probability of the answer tokens)."""
        from cowest.weak import answer_confidence

        task = self.task(ckpt.task)
        drafts = [d[0] for d in self.drafts(ckpt, items)]
        preds = [task.extract(d, e) or "" for d, e in zip(drafts, items)]

        def build(folder: Path) -> None:
            model, tok = self.weak_for_inference(ckpt)
            ps = self.weak_prompts(ckpt.weak, task, items, ckpt.fmt)
            spans = [_answer_span(d, pr) for d, pr in zip(drafts, preds)]
            write_json(folder / "confidence.json", [answer_confidence(model, tok, p, d, sp) if sp else 0.0
                                                    for p, d, sp in zip(ps, drafts, spans)])

        inputs = {"drafts": self.store.key("drafts", self.drafts_inputs(ckpt, items, 1, 0.0)),
                  "checkpoint": ckpt.key, "span": "answer segment"}  # how _answer_span locates the answer
        folder = self.store.stage("confidence", inputs, build, outputs=["confidence.json"])
        return preds, read_json(folder / "confidence.json")
