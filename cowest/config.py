"""Profiles: experiments as data.

A profile is a YAML file (`configs/<name>.yaml`, or any path) loaded into the typed
`Profile` below. Loading is strict: an unknown key, a value of the wrong type or a missing
required key is a `ConfigError` that names the key and the file. Every field has a one-line
comment here; the YAML files carry the reasons for their values.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from cowest.stages import stable_hash

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


class ConfigError(ValueError):
    """A profile is missing, malformed, or has an unknown or mistyped key."""


# ----------------------------------------------------------------------------- sections
@dataclass(frozen=True)
class TaskSpec:
    name: str  # a registered task (cowest.tasks.TASKS)
    n_train: int  # SFT training questions
    n_validation: int  # held-out questions (not used for any choice on test)
    n_test: int  # evaluation questions
    params: dict[str, Any] = field(default_factory=dict)  # passed to the task (path, generator knobs)
    strong: str | None = None  # strong model for this task (default: the first of strong_models)


@dataclass(frozen=True)
class LoraSpec:
    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"]
    )


@dataclass(frozen=True)
class TrainSpec:
    epochs: float
    learning_rate: float
    batch_size: int
    grad_accum: int = 1
    max_length: int = 384
    trl: dict[str, Any] = field(default_factory=dict)  # passed as is to trl.SFTConfig (scheduler, warmup...)


@dataclass(frozen=True)
class DPOSpec:
    epochs: float
    learning_rate: float
    batch_size: int
    grad_accum: int = 1
    max_length: int = 384
    beta: float = 0.1  # DPO temperature
    loss_type: str = "sigmoid"  # any TRL DPO loss type
    trl: dict[str, Any] = field(default_factory=dict)  # passed as is to trl.DPOConfig


@dataclass(frozen=True)
class WeakSpec:
    name: str  # label used in tables and paths
    model: str  # offline asset name (cowest.assets), hub id, or local folder
    sft: TrainSpec
    dpo: DPOSpec
    quantization: Literal["none", "4bit"] = "none"  # 4bit = QLoRA (NF4, bitsandbytes)
    lora: LoraSpec = field(default_factory=LoraSpec)
    max_new_tokens: int = 64  # draft length
    gen_batch_size: int = 16


@dataclass(frozen=True)
class StrongSpec:
    name: str  # label used in tables, the cache and the ledger
    model: str  # model id sent to the API; for backend "local", an offline asset name
    backend: Literal["local", "api"] = "local"  # local: llama.cpp server started by the run
    base_url: str | None = None  # api backend: OpenAI-compatible endpoint
    api_key_env: str | None = None  # name of the environment variable holding the key
    mode: Literal["chat", "completion"] = "chat"  # completion for base models
    max_tokens: int = 128
    temperature: float = 0.0
    top_p: float = 1.0
    system_prompt: str | None = None  # chat mode: a system message before every prompt
    extra_body: dict[str, Any] = field(default_factory=dict)  # extra fields of every request body
    n_threads: int = 2  # local backend: llama.cpp threads
    n_ctx: int = 2048  # local backend: context size
    concurrency: int = 1  # parallel requests (1 for a local llama.cpp server)
    timeout_s: float = 120.0
    max_retries: int = 4
    price_in_per_mtok: float = 0.0  # USD per 1M prompt tokens
    price_out_per_mtok: float = 0.0  # USD per 1M completion tokens


@dataclass(frozen=True)
class CollabSpec:
    format: Literal["direct", "knowledge", "cot"] = "cot"  # the weak model's draft format
    n_queries: int = 100  # training queries mined for preferences (per task)
    k: int = 4  # drafts sampled per query
    temperature: float = 0.8  # draft sampling temperature
    evaluator: Literal["gold", "llm_judge"] = "gold"
    judge: str | None = None  # strong-model name used as judge (default: the main strong model)
    pairing: Literal["all", "extremes"] = "all"  # see cowest.preferences.make_pairs
    max_pairs_per_query: int = 4


@dataclass(frozen=True)
class FlareSpec:
    threshold: float = 0.4  # retrieve when a drafted token's probability is below this
    top_k: int = 2  # passages retrieved
    max_steps: int = 3  # sentences generated, each may trigger one retrieval
    # tokens drafted with log-probabilities per look-ahead (FLARE's "next sentence"); null = the
    # whole answer. Set it for local servers, where each log-probability token costs ~0.1 s.
    lookahead_tokens: int | None = None


@dataclass(frozen=True)
class SuperICLSpec:
    n_demos: int = 4  # in-context examples from the training split


@dataclass(frozen=True)
class BaselineSpec:
    flare: FlareSpec = field(default_factory=FlareSpec)
    supericl: SuperICLSpec = field(default_factory=SuperICLSpec)


@dataclass(frozen=True)
class AblationSpec:
    tasks: list[str] = field(default_factory=list)  # tasks the ablations run on
    n_test: int = 100  # test questions per ablation cell (a prefix of the test split)
    formats: list[str] = field(default_factory=lambda: ["direct", "knowledge", "cot"])
    strong_models: list[str] = field(default_factory=list)  # names from strong_models
    weak_models: list[str] = field(default_factory=list)  # names from weak_models
    volumes: list[int] = field(default_factory=list)  # preference pairs used for DPO
    evaluators: list[str] = field(default_factory=lambda: ["gold", "llm_judge"])
    rounds: int = 2  # iterated alignment rounds


@dataclass(frozen=True)
class Profile:
    name: str
    description: str
    tasks: list[TaskSpec]
    weak_models: list[WeakSpec]  # the first is the main weak model
    strong_models: list[StrongSpec]  # the first is the main strong model
    seed: int = 0
    collab: CollabSpec = field(default_factory=CollabSpec)
    baselines: BaselineSpec = field(default_factory=BaselineSpec)
    ablations: AblationSpec = field(default_factory=AblationSpec)
    budget_usd: float | None = None  # stop before a paid call would pass this
    cache_mode: Literal["readwrite", "replay", "off"] = "readwrite"
    source: str = ""  # the file it was loaded from (filled by the loader)

    # -- lookups ------------------------------------------------------------------
    @property
    def weak(self) -> WeakSpec:
        return self.weak_models[0]

    @property
    def strong(self) -> StrongSpec:
        return self.strong_models[0]

    def weak_model(self, name: str) -> WeakSpec:
        return _by_name(self.weak_models, name, "weak_models", self.source)

    def strong_model(self, name: str) -> StrongSpec:
        return _by_name(self.strong_models, name, "strong_models", self.source)

    def task(self, name: str) -> TaskSpec:
        return _by_name(self.tasks, name, "tasks", self.source)

    def strong_for(self, task: str) -> StrongSpec:
        """The strong model a task uses by default (the paper uses GPT-3.5 for Prosocial)."""
        t = self.task(task)
        return self.strong_model(t.strong) if t.strong else self.strong

    def section_hash(self, *parts: Any) -> str:
        return stable_hash([dataclasses.asdict(p) if dataclasses.is_dataclass(p) else p for p in parts])

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d.pop("source")
        return d

    def hash(self) -> str:
        return stable_hash(self.to_dict())


def _by_name(items: list[Any], name: str, where: str, source: str) -> Any:
    for it in items:
        if it.name == name:
            return it
    raise ConfigError(f"{source}: no entry named {name!r} in {where} (have: {[i.name for i in items]})")


# ----------------------------------------------------------------------------- loading
def _check(tp: Any, value: Any, path: str, source: str) -> Any:
    """Check `value` against the type `tp` and build dataclasses; errors name the key."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _check(a, value, path, source)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{source}: {path}: bad value {value!r}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{source}: {path}: {value!r} is not one of {list(args)}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{source}: {path}: expected a list, got {type(value).__name__}")
        return [_check(args[0], v, f"{path}[{i}]", source) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: {path}: expected a mapping, got {type(value).__name__}")
        return {k: _check(args[1], v, f"{path}.{k}", source) for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, path, source)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{source}: {path}: expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{source}: {path}: expected an integer, got {value!r}")
        return value
    if tp in (str, bool):
        if not isinstance(value, tp):
            raise ConfigError(f"{source}: {path}: expected {tp.__name__}, got {value!r}")
        return value
    raise ConfigError(f"{source}: {path}: unsupported type {tp}")  # pragma: no cover


def _build(cls: Any, data: Any, path: str, source: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: {path or 'top level'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.name != "source"}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        where = f"{path}." if path else ""
        raise ConfigError(
            f"{source}: unknown key {where}{unknown[0]} (allowed here: {', '.join(sorted(fields))})"
        )
    kwargs = {}
    for name, f in fields.items():
        key = f"{path}.{name}" if path else name
        if name in data:
            kwargs[name] = _check(hints[name], data[name], key, source)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{source}: missing required key {key}")
    return cls(**kwargs)


def load_profile(name_or_path: str | Path) -> Profile:
    """Load `configs/<name>.yaml` or a YAML path into a checked `Profile`."""
    p = Path(name_or_path)
    if p.suffix not in (".yaml", ".yml"):
        p = CONFIG_DIR / f"{name_or_path}.yaml"
    if not p.exists():
        known = sorted(q.stem for q in CONFIG_DIR.glob("*.yaml"))
        raise ConfigError(f"profile {str(name_or_path)!r} not found ({p}); known profiles: {known}")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML: {e}") from None
    profile: Profile = _build(Profile, data, "", str(p))
    profile = dataclasses.replace(profile, source=str(p))
    _cross_check(profile)
    return profile


def _cross_check(pr: Profile) -> None:
    """Checks that span sections: names referenced elsewhere must exist."""
    from cowest.tasks import TASKS

    for t in pr.tasks:
        if t.name not in TASKS:
            raise ConfigError(f"{pr.source}: tasks: unknown task {t.name!r} (known: {sorted(TASKS)})")
    if not pr.weak_models or not pr.strong_models:
        raise ConfigError(f"{pr.source}: weak_models and strong_models need at least one entry")
    if pr.collab.judge:
        pr.strong_model(pr.collab.judge)
    for t in pr.tasks:
        if t.strong:
            pr.strong_model(t.strong)
    for n in pr.ablations.strong_models:
        pr.strong_model(n)
    for n in pr.ablations.weak_models:
        pr.weak_model(n)
    for n in pr.ablations.tasks:
        pr.task(n)
    for s in pr.strong_models:
        if s.backend == "api" and not s.base_url:
            raise ConfigError(f"{pr.source}: strong_models.{s.name}: backend 'api' needs base_url")
