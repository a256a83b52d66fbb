"""The pipeline: each step of the method as a stage with its artifacts on disk.

    data -> sft -> drafts -> preferences -> dpo -> evaluate

A `Run` holds one profile's context (config, results folder, request cache, ledger, strong
model clients and the local servers behind them). Each stage method writes into
`results/<profile>/runs/<stage>/...` and is reused when its marker matches (see
`cowest.stages`); `force=True` redoes it. Notebooks call these methods and nothing else
does the work, so every table can be traced from a notebook cell to one function here.
"""

from __future__ import annotations

import atexit
import os
import dataclasses
import random
import warnings
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from cowest import assets, prompts
from cowest.config import Profile, StrongSpec, WeakSpec, load_profile
from cowest.stages import read_json, read_jsonl, stable_hash, stage, write_json, write_jsonl
from cowest.tasks import get_task
from cowest.tasks.base import Example, Task

RESULTS = Path(os.environ.get("COWEST_RESULTS", assets.REPO_ROOT / "results"))
PREF_SPLIT = "prefq"  # training-split questions held out from SFT, mined for preferences


@dataclass(frozen=True)
class Checkpoint:
    """A weak model state: the base model plus an adapter (None: the base model itself)."""

    weak: WeakSpec
    task: str
    fmt: str
    tag: str  # "sft", "cowest", "rlwf", "cowest-r2", ...
    adapter: Path | None
    key: str  # hash of everything that produced it
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


def example_to_dict(e: Example) -> dict[str, Any]:
    return dataclasses.asdict(e)


def example_from_dict(d: dict[str, Any]) -> Example:
    return Example(**d)


class Run:
    """One profile's run context. Use as a context manager or call `close()`."""

    def __init__(self, profile: str | Path | Profile, *, force: bool = False, results_root: Path = RESULTS):
        from cowest.cache import Ledger, RequestCache

        self.cfg = profile if isinstance(profile, Profile) else load_profile(profile)
        self.force = force
        self.root = Path(results_root) / self.cfg.name
        self.runs = self.root / "runs"
        self.tables = self.root / "tables"
        self.figures = self.root / "figures"
        for d in (self.runs, self.tables, self.figures):
            d.mkdir(parents=True, exist_ok=True)
        db = self.root / "cache.sqlite"
        self.cache = RequestCache(db, mode=self.cfg.cache_mode)
        self.ledger = Ledger(db, budget_usd=self.cfg.budget_usd)
        self._tasks: dict[str, Task] = {}
        self._tokenizers: dict[str, Any] = {}
        self._clients: dict[str, Any] = {}
        self._servers = ExitStack()
        atexit.register(self.close)

    # -- context ---------------------------------------------------------------------
    def __enter__(self) -> "Run":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop every local server this run started."""
        self._servers.close()
        self._clients.clear()

    # -- tasks and data --------------------------------------------------------------
    def task(self, name: str) -> Task:
        if name not in self._tasks:
            self._tasks[name] = get_task(name, **self.cfg.task(name).params)
        return self._tasks[name]

    def data(self, task_name: str) -> dict[str, list[Example]]:
        """train (SFT), prefq (held-out training questions for preferences), validation, test."""
        spec = self.cfg.task(task_name)
        task = self.task(task_name)
        folder = self.runs / "data" / task_name
        n_pref = self.cfg.collab.n_queries

        def build(folder: Path) -> None:
            train = task.load("train", spec.n_train + n_pref, self.cfg.seed)
            if len(train) < spec.n_train + n_pref:
                raise ValueError(
                    f"{task_name}: the train split has {len(train)} items, but n_train + collab.n_queries "
                    f"= {spec.n_train + n_pref}; lower them in {self.cfg.source}"
                )
            splits = {
                "train": train[: spec.n_train],
                PREF_SPLIT: train[spec.n_train :],
                "validation": task.load("validation", spec.n_validation, self.cfg.seed),
                "test": task.load("test", spec.n_test, self.cfg.seed),
            }
            for name, items in splits.items():
                write_jsonl(folder / f"{name}.jsonl", [example_to_dict(e) for e in items])

        stage(folder, ["data", dataclasses.asdict(spec), n_pref, self.cfg.seed], build, force=self.force)
        return {
            p.stem: [example_from_dict(d) for d in read_jsonl(p)]
            for p in sorted(folder.glob("*.jsonl"))
        }

    # -- models ----------------------------------------------------------------------
    @staticmethod
    def weak_base(weak: WeakSpec) -> str:
        """A local folder for offline assets; otherwise the hub id or path as given."""
        return str(assets.hf_folder(weak.model)) if weak.model in assets.ASSETS else weak.model

    def weak_prompts(self, weak: WeakSpec, task: Task, examples: Sequence[Example], fmt: str) -> list[str]:
        from cowest.weak import load_tokenizer, render_prompt

        base = self.weak_base(weak)
        if base not in self._tokenizers:  # every stage renders prompts: load each tokenizer once
            self._tokenizers[base] = load_tokenizer(base)
        tok = self._tokenizers[base]
        return [render_prompt(tok, prompts.render(f"weak_{fmt}", question=task.render_question(e))) for e in examples]

    def strong(self, name: str | None = None, *, logprobs: bool = False) -> Any:
        """The client for a strong model of the profile (starting its local server if needed).

        A local llama.cpp server returns chat-mode token log-probabilities only when it keeps
        the logits of every position, which makes each call about 3x slower; so FLARE, the one
        caller that needs them, gets its own server (`logprobs=True`) and everyone else a fast one.
        """
        from cowest.strong import LocalServer, StrongClient

        spec: StrongSpec = self.cfg.strong_model(name) if name else self.cfg.strong
        handle = spec.name + ("+logprobs" if logprobs and spec.backend == "local" else "")
        if handle in self._clients:
            return self._clients[handle]
        if spec.backend == "local":
            asset = assets.get_asset(spec.model)
            server = self._servers.enter_context(
                LocalServer(
                    assets.gguf_path(spec.model),
                    alias=spec.model,
                    n_threads=spec.n_threads,
                    n_ctx=spec.n_ctx,
                    chat_format=asset.chat_format,
                    logits_all=logprobs,
                    log_path=self.root / f"server-{handle}.log",
                )
            )
            base_url, key_env = server.base_url, None
        else:
            base_url, key_env = spec.base_url, spec.api_key_env
        client = StrongClient(
            spec.name,
            spec.model,
            base_url=base_url,
            api_key_env=key_env,
            mode=spec.mode,
            max_tokens=spec.max_tokens,
            temperature=spec.temperature,
            timeout_s=spec.timeout_s,
            max_retries=spec.max_retries,
            concurrency=spec.concurrency,
            price_in=spec.price_in_per_mtok,
            price_out=spec.price_out_per_mtok,
            cache=self.cache,
            ledger=self.ledger,
        )
        self._clients[handle] = client
        return client

    def collaborator(self, task_name: str, strong: str | None = None, *, logprobs: bool = False) -> Any:
        from cowest.collaborate import Collaborator

        client = self.strong(strong, logprobs=logprobs)
        demos: tuple[Example, ...] = ()
        if client.mode == "completion":  # few-shot worked examples, from the training split only
            demos = tuple(self.data(task_name)["train"][:3])
        return Collaborator(self.task(task_name), client, demos)

    # -- SFT -------------------------------------------------------------------------
    def sft(self, task_name: str, weak: WeakSpec | None = None, fmt: str | None = None) -> Checkpoint:
        """Supervised fine-tuning (LoRA or QLoRA) on the task's training split."""
        from cowest import train

        weak = weak or self.cfg.weak
        fmt = fmt or self.cfg.collab.format
        task = self.task(task_name)
        folder = self.runs / "sft" / weak.name / task_name / fmt
        key = stable_hash(
            ["sft", dataclasses.asdict(weak), dataclasses.asdict(self.cfg.task(task_name)), fmt,
             prompts.version(f"weak_{fmt}"), self.cfg.seed]
        )

        def build(folder: Path) -> None:
            items = self.data(task_name)["train"]
            rows = [
                {"prompt": p, "completion": task.target(e, fmt)}
                for p, e in zip(self.weak_prompts(weak, task, items, fmt), items)
            ]
            train.sft(
                self.weak_base(weak), rows, folder / "adapter",
                lora=dataclasses.asdict(weak.lora), quantization=weak.quantization,
                epochs=weak.sft.epochs, learning_rate=weak.sft.learning_rate,
                batch_size=weak.sft.batch_size, grad_accum=weak.sft.grad_accum,
                max_length=weak.sft.max_length, seed=self.cfg.seed,
            )

        stage(folder, key, build, force=self.force, outputs=["adapter/adapter_config.json"])
        return Checkpoint(weak, task_name, fmt, "sft", folder / "adapter", key)

    def sft_log(self, ckpt: Checkpoint) -> dict[str, Any]:
        assert ckpt.adapter is not None
        return read_json(ckpt.adapter / "train_log.json")

    # -- weak generation -------------------------------------------------------------
    def drafts(
        self, ckpt: Checkpoint, examples: Sequence[Example], *, split: str, k: int = 1, temperature: float = 0.0
    ) -> list[list[str]]:
        """k drafts per example from a weak checkpoint (greedy when temperature is 0)."""
        from cowest.weak import generate, load_weak

        weak = ckpt.weak
        task = self.task(ckpt.task)
        folder = self.runs / "drafts" / ckpt.id / f"{split}-n{len(examples)}-k{k}-t{temperature}"
        key = stable_hash(["drafts", ckpt.key, [e.id for e in examples], k, temperature, weak.max_new_tokens,
                           self.cfg.seed])

        def build(folder: Path) -> None:
            model, tok = load_weak(self.weak_base(weak), quantization=weak.quantization, adapter=ckpt.adapter)
            ps = self.weak_prompts(weak, task, examples, ckpt.fmt)
            outs = generate(
                model, tok, ps, max_new_tokens=weak.max_new_tokens, temperature=temperature,
                num_samples=k, seed=self.cfg.seed, batch_size=weak.gen_batch_size,
                desc=f"drafts {ckpt.id} {split}",
            )
            write_jsonl(folder / "drafts.jsonl", [{"id": e.id, "drafts": o} for e, o in zip(examples, outs)])
            del model

        stage(folder, key, build, force=self.force)
        rows = read_jsonl(folder / "drafts.jsonl")
        return [r["drafts"] for r in rows]

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
        if name == "llm_judge":
            if task_name is None:
                raise ValueError("the llm_judge evaluator needs the task name (its judge may depend on it)")
            return LLMJudge(self.strong(self.judge_for(task_name).name))
        raise ValueError(f"unknown evaluator {name!r} (use 'gold' or 'llm_judge')")

    def preferences(
        self,
        ckpt: Checkpoint,
        *,
        feedback: str = "collab",
        evaluator: str | None = None,
        strong: str | None = None,
        tag: str | None = None,
    ) -> dict[str, Any]:
        """Mine preference pairs on the held-out training questions.

        feedback="collab" is CoWest (drafts judged by what the strong model makes of them);
        feedback="single" is our RLWF (drafts judged on their own; no strong-model call).
        Returns {"records", "pairs", "stats"}.
        """
        from cowest.preferences import make_pairs, make_single_feedback_pairs, summarize

        c = self.cfg.collab
        ev = self.evaluator(evaluator, ckpt.task)
        task = self.task(ckpt.task)
        strong_name = (strong or self.cfg.strong_for(ckpt.task).name) if feedback == "collab" else None
        tag = tag or f"{feedback}-{ev.name}" + (f"-{strong}" if strong else "")
        folder = self.runs / "prefs" / ckpt.id / tag
        key = stable_hash(["prefs", ckpt.key, feedback, ev.name, strong_name, dataclasses.asdict(c),
                           self.judge_for(ckpt.task).name if ev.name == "llm_judge" else None,
                           prompts.versions(), self.cfg.seed])

        def build(folder: Path) -> None:
            qs = self.data(ckpt.task)[PREF_SPLIT]
            drafts = self.drafts(ckpt, qs, split=PREF_SPLIT, k=c.k, temperature=c.temperature)
            weak_ps = self.weak_prompts(ckpt.weak, task, qs, ckpt.fmt)
            flat_ex = [e for e, ds in zip(qs, drafts) for _ in ds]
            flat_d = [d for ds in drafts for d in ds]
            stage_name = f"prefs:{tag}"
            records, pairs = [], []
            if feedback == "collab":
                collab = self.collaborator(ckpt.task, strong_name)
                alone = [x.text for x in collab.alone(qs, stage=stage_name)]
                refined = [x.text for x in collab.refine(flat_ex, flat_d, stage=stage_name)]
                z_scores = ev.score(task, qs, alone, stage=stage_name)
                r_scores = ev.score(task, flat_ex, refined, stage=stage_name)
            else:
                alone, refined, z_scores = [""] * len(qs), [""] * len(flat_d), [0.0] * len(qs)
                r_scores = ev.score(task, flat_ex, flat_d, stage=stage_name)
            i = 0
            for e, ds, p, z, zs in zip(qs, drafts, weak_ps, alone, z_scores):
                rs = r_scores[i : i + len(ds)]
                ref = refined[i : i + len(ds)]
                i += len(ds)
                if feedback == "collab":
                    deltas = [r - zs for r in rs]
                    qp = make_pairs(e.id, p, ds, deltas, pairing=c.pairing, max_pairs=c.max_pairs_per_query,
                                    seed=self.cfg.seed)
                else:
                    deltas = list(rs)  # RLWF: the drafts' own scores
                    qp = make_single_feedback_pairs(e.id, p, ds, rs, pairing=c.pairing,
                                                    max_pairs=c.max_pairs_per_query, seed=self.cfg.seed)
                pairs.extend(qp)
                records.append({"id": e.id, "gold": task.answer_text(e), "strong_alone": z, "alone_score": zs,
                                "drafts": ds, "refined": ref, "scores": rs, "deltas": deltas})
            write_jsonl(folder / "records.jsonl", records)
            write_jsonl(folder / "pairs.jsonl", [p.to_dict() for p in pairs])
            stats = summarize(records, pairs) if feedback == "collab" else {
                "queries": len(records), "drafts": len(flat_d), "pairs": len(pairs),
                "queries_with_pairs": len({p.query_id for p in pairs}),
            }
            stats.update({"feedback": feedback, "evaluator": ev.name,
                          "judge_unparsed": getattr(ev, "unparsed", 0)})
            write_json(folder / "stats.json", stats)

        stage(folder, key, build, force=self.force)
        return {
            "records": read_jsonl(folder / "records.jsonl"),
            "pairs": read_jsonl(folder / "pairs.jsonl"),
            "stats": read_json(folder / "stats.json"),
            "key": key,
        }

    # -- DPO -------------------------------------------------------------------------
    def dpo(self, start: Checkpoint, prefs: dict[str, Any], *, tag: str, volume: int | None = None) -> Checkpoint:
        """DPO from `start` (its adapter is both the starting point and the frozen reference)."""
        from cowest import train

        weak = start.weak
        pairs = prefs["pairs"]
        if volume is not None:
            pairs = random.Random(self.cfg.seed).sample(pairs, min(volume, len(pairs)))
        folder = self.runs / "dpo" / weak.name / start.task / start.fmt / tag
        key = stable_hash(["dpo", start.key, prefs["key"], volume, dataclasses.asdict(weak.dpo), self.cfg.seed])
        if not pairs:
            # Nothing to align on: say so loudly, keep the starting weights, and mark the checkpoint
            # so every table that uses it can show it (an ablation grid should not die on one cell).
            note = (f"no preference pairs for {start.id} ({tag}): every mined query had only positive or "
                    "only negative drafts, so DPO did not run and the starting weights are kept. Raise "
                    "collab.k, collab.temperature or collab.n_queries.")
            warnings.warn(note, stacklevel=2)
            return Checkpoint(weak, start.task, start.fmt, tag, start.adapter, start.key + ":no-pairs", note)

        def build(folder: Path) -> None:
            d = weak.dpo
            train.dpo(
                self.weak_base(weak), start.adapter, [
                    {"prompt": p["prompt"], "chosen": p["chosen"], "rejected": p["rejected"]} for p in pairs
                ],
                folder / "adapter", quantization=weak.quantization, beta=d.beta, loss_type=d.loss_type,
                learning_rate=d.learning_rate, epochs=d.epochs, batch_size=d.batch_size,
                grad_accum=d.grad_accum, max_length=d.max_length, seed=self.cfg.seed,
            )

        stage(folder, key, build, force=self.force, outputs=["adapter/adapter_config.json"])
        return Checkpoint(weak, start.task, start.fmt, tag, folder / "adapter", key)

    def cowest(
        self, task_name: str, *, weak: WeakSpec | None = None, fmt: str | None = None, rounds: int = 1,
        evaluator: str | None = None, strong: str | None = None, volume: int | None = None,
    ) -> list[Checkpoint]:
        """SFT, then `rounds` rounds of (mine collaborative preferences -> DPO). One checkpoint per round."""
        ckpt = self.sft(task_name, weak, fmt)
        out = []
        suffix = "".join(
            f"-{k}{v}" for k, v in [("", evaluator), ("s-", strong), ("v", volume)] if v is not None
        )
        for r in range(1, rounds + 1):
            prefs = self.preferences(ckpt, evaluator=evaluator, strong=strong)
            ckpt = self.dpo(ckpt, prefs, tag=f"cowest-r{r}{suffix}", volume=volume)
            out.append(ckpt)
        return out

    def rlwf(self, task_name: str, *, weak: WeakSpec | None = None, fmt: str | None = None) -> Checkpoint:
        """RLWF as we define it: DPO on single-model feedback (drafts scored on their own)."""
        sft = self.sft(task_name, weak, fmt)
        prefs = self.preferences(sft, feedback="single")
        return self.dpo(sft, prefs, tag="rlwf")

    # -- evaluation ------------------------------------------------------------------
    def test_items(self, task_name: str, n: int | None = None) -> list[Example]:
        items = self.data(task_name)["test"]
        return items[:n] if n else items

    def evaluate(
        self, method: str, task_name: str, *, ckpt: Checkpoint | None = None, strong: str | None = None,
        n: int | None = None, label: str | None = None,
    ) -> Result:
        """Run one method on the test split and score it.

        method: "weak" (ckpt alone), "strong" (strong alone, CoT), "collab" (ckpt drafts,
        strong refines: CoWest when ckpt is aligned, standard refinement when it is SFT),
        "flare", "supericl" (ckpt gives predictions and confidences).
        """
        from cowest.metrics import bootstrap_ci, bootstrap_metric_ci, macro_f1

        task = self.task(task_name)
        items = self.test_items(task_name, n)
        strong_name = (strong or self.cfg.strong_for(task_name).name) if method != "weak" else None
        label = label or method
        folder = self.runs / "eval" / task_name / label / (ckpt.id.replace("/", "_") if ckpt else "-") / (
            strong_name or "-") / f"n{len(items)}"
        key = stable_hash(["eval", method, ckpt.key if ckpt else None,
                           dataclasses.asdict(self.cfg.strong_model(strong_name)) if strong_name else None,
                           [e.id for e in items], prompts.versions(), dataclasses.asdict(self.cfg.baselines)])

        def build(folder: Path) -> None:
            rows = self._predict(method, task_name, items, ckpt, strong_name, stage=f"eval:{label}")
            for r, e in zip(rows, items):
                r["pred"] = task.extract(r["final"], e)
                r["gold"] = task.answer_text(e)
                r["score"] = task.score(r["pred"], e)
                if task.info.answer_type == "free":
                    r["f1"] = task.score_f1(r["pred"], e)
            write_jsonl(folder / "predictions.jsonl", rows)

        stage(folder, key, build, force=self.force)
        rows = read_jsonl(folder / "predictions.jsonl")
        metrics = dict(task.evaluate([r["pred"] for r in rows], items))
        m1, m2 = task.info.metrics
        lo, hi = bootstrap_ci([r["score"] for r in rows], seed=self.cfg.seed)
        metrics[f"{m1}_lo"], metrics[f"{m1}_hi"] = lo, hi
        if m2 == "f1":
            lo, hi = bootstrap_ci([r["f1"] for r in rows], seed=self.cfg.seed)
        else:
            labels = task.info.labels or []
            lo, hi = bootstrap_metric_ci(
                lambda p, g: macro_f1(p, g, labels), [r["pred"] for r in rows], [r["gold"] for r in rows],
                seed=self.cfg.seed,
            )
        metrics[f"{m2}_lo"], metrics[f"{m2}_hi"] = lo, hi
        return Result(label, task_name, rows, metrics)

    def _predict(
        self, method: str, task_name: str, items: list[Example], ckpt: Checkpoint | None, strong: str | None,
        *, stage: str,
    ) -> list[dict[str, Any]]:
        from cowest import baselines

        if method in ("weak", "collab", "supericl") and ckpt is None:
            raise ValueError(f"method {method!r} needs a weak checkpoint")
        if method == "weak":
            drafts = [d[0] for d in self.drafts(ckpt, items, split="test")]
            return [{"id": e.id, "draft": d, "final": d} for e, d in zip(items, drafts)]
        if method == "strong":
            outs = self.collaborator(task_name, strong).alone(items, stage=stage)
            return [{"id": e.id, "final": o.text, "error": o.error} for e, o in zip(items, outs)]
        if method == "collab":
            drafts = [d[0] for d in self.drafts(ckpt, items, split="test")]
            outs = self.collaborator(task_name, strong).refine(items, drafts, stage=stage)
            return [{"id": e.id, "draft": d, "final": o.text, "error": o.error}
                    for e, d, o in zip(items, drafts, outs)]
        if method == "flare":
            f = self.cfg.baselines.flare
            task = self.task(task_name)
            fl = baselines.Flare(self.collaborator(task_name, strong, logprobs=True), baselines.Retriever(task.corpus()),
                                 threshold=f.threshold, top_k=f.top_k, max_steps=f.max_steps,
                                 lookahead_tokens=f.lookahead_tokens,
                                 answerer=self.collaborator(task_name, strong) if f.lookahead_tokens is not None else None)
            from tqdm.auto import tqdm

            rows = []
            for e in tqdm(items, desc=f"{stage}: FLARE"):
                a = fl.answer(e, stage=stage)
                rows.append({"id": e.id, "final": a["text"], "retrievals": a["retrievals"], "queries": a["queries"],
                             "error": a["error"]})
            return rows
        if method == "supericl":
            return self._supericl(task_name, items, ckpt, strong, stage=stage)
        raise ValueError(f"unknown method {method!r}")

    def _weak_predictions(self, ckpt: Checkpoint, items: Sequence[Example], split: str) -> tuple[list[str], list[float]]:
        """The weak model's greedy answer and its confidence (probability of the answer tokens)."""
        from cowest.weak import answer_confidence, load_weak

        task = self.task(ckpt.task)
        drafts = [d[0] for d in self.drafts(ckpt, items, split=split)]
        preds = [task.extract(d, e) or "" for d, e in zip(drafts, items)]
        folder = self.runs / "confidence" / ckpt.id / f"{split}-n{len(items)}"
        key = stable_hash(["conf", ckpt.key, [e.id for e in items]])

        def build(folder: Path) -> None:
            model, tok = load_weak(self.weak_base(ckpt.weak), quantization=ckpt.weak.quantization,
                                   adapter=ckpt.adapter)
            ps = self.weak_prompts(ckpt.weak, task, items, ckpt.fmt)
            confs = [answer_confidence(model, tok, p, d, pr) if pr else 0.0
                     for p, d, pr in zip(ps, drafts, preds)]
            write_json(folder / "confidence.json", confs)

        stage(folder, key, build, force=self.force)
        return preds, read_json(folder / "confidence.json")

    def _supericl(self, task_name: str, items: list[Example], ckpt: Checkpoint | None, strong: str | None,
                  *, stage: str) -> list[dict[str, Any]]:
        from cowest.baselines import SuperICL

        assert ckpt is not None
        n_demos = self.cfg.baselines.supericl.n_demos
        demo_items = self.data(task_name)["train"][:n_demos]
        dp, dc = self._weak_predictions(ckpt, demo_items, "train")
        tp, tc = self._weak_predictions(ckpt, items, "test")
        sic = SuperICL(self.task(task_name), self.strong(strong), list(zip(demo_items, dp, dc)))
        outs = sic.answer_many(items, tp, tc, stage=stage)
        return [{"id": e.id, "weak_pred": p, "confidence": c, "final": o.text, "error": o.error}
                for e, p, c, o in zip(items, tp, tc, outs)]
