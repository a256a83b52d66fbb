"""Profiles: experiments as data.

A profile is a YAML file (`configs/<name>.yaml`, or any path) loaded into the typed, frozen
pydantic `Profile` below. The rules:

- Strict: an unknown key, a value of the wrong type (`true` or "many" is not an integer),
  a value outside its closed set or range, a missing required key, or a task parameter the
  task does not take is a `ConfigError`. All errors are reported at once, one per line, as
  `<file>: <key path>: <message>` (key paths like `weak_models[0].sft.learning_rate`).
- `extends: <profile name | path relative to this file>` starts from another profile:
  mappings merge deeply, lists are replaced whole, except `tasks`, `weak_models` and
  `strong_models`, whose entries merge by `name` (same name: update; new name: append).
  A profile that extends another must set its own `name` (results are stored by name).
- `load_profile(p, overrides=["collab.k=8", "weak_models.smollm2-135m.dpo.beta=0.5"])`
  sets keys as the command line's `--set` does: the value is YAML, a list of named entries
  is indexed by name (or position), and the result is checked like the file.
Every field has a one-line comment here; the YAML files carry the reasons for their values.
"""

from __future__ import annotations

import copy
import inspect
import re
import typing
from pathlib import Path
from typing import Annotated, Any, Literal, Sequence

import yaml
from annotated_types import Ge, Gt, Le, Lt
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, Strict, ValidationError
from pydantic import ValidationInfo, field_validator
from pydantic_core import PydanticCustomError

from cowest.artifacts import stable_hash

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


class ConfigError(ValueError):
    """A profile is missing, malformed, or has an unknown, mistyped or out-of-range key."""


# ----------------------------------------------------------------------------- value types
Int = Annotated[int, Strict()]  # an integer (not a bool, not a string)
Count = Annotated[int, Strict(), Ge(1)]
NonNegInt = Annotated[int, Strict(), Ge(0)]
PosNum = Annotated[float, Strict(), Gt(0)]  # float fields take an int, not a bool or a string
NonNegNum = Annotated[float, Strict(), Ge(0)]
Temperature = Annotated[float, Strict(), Ge(0), Le(2)]
Probability = Annotated[float, Strict(), Ge(0), Le(1)]
Format = Literal["direct", "knowledge", "cot"]
Evaluator = Literal["gold", "llm_judge"]
DPOLoss = Literal["sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair",
                  "sppo_hard", "aot", "aot_pair", "apo_zero", "apo_down", "discopop", "sft"]


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _error(kind: str, text: str, **ctx: Any) -> PydanticCustomError:
    return PydanticCustomError(kind, "{text}", {"text": text, **ctx})


# ----------------------------------------------------------------------------- sections
class TaskSpec(_Spec):
    name: str  # a registered task (cowest.tasks.TASKS)
    n_train: Count  # SFT training questions
    n_validation: NonNegInt  # held-out questions (not used for any choice on test)
    n_test: Count  # evaluation questions
    params: dict[str, Any] = {}  # passed to the task (path, generator knobs)
    strong: str | None = None  # strong model for this task (default: the first of strong_models)
    dpo_seeds: Count | None = None  # DPO seeds of this task's main-table rows (default: collab.dpo_seeds)
    n_queries: Count | None = None  # training queries mined for preferences (default: collab.n_queries)

    @field_validator("name")
    @classmethod
    def _known_task(cls, name: str) -> str:
        from cowest.tasks import TASKS

        if name not in TASKS:
            raise _error("unknown_task", f"unknown task {name!r} (known: {sorted(TASKS)})")
        return name

    @field_validator("params")
    @classmethod
    def _known_params(cls, params: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        if "name" not in info.data:  # the name was wrong: nothing to check against
            return params
        allowed = task_params(info.data["name"])
        unknown = sorted(set(params) - set(allowed if allowed is not None else params))
        if unknown:
            raise _error("unknown_param", f"unknown parameter{'s' * (len(unknown) > 1)} "
                         f"{', '.join(unknown)} of task {info.data['name']} "
                         f"(allowed: {', '.join(allowed or [])})", key=unknown[0])
        return params


def task_params(name: str) -> list[str] | None:
    """The parameters `get_task(name, **params)` accepts (None: any)."""
    from cowest.tasks import TASKS

    factory = TASKS[name]
    if isinstance(getattr(factory, "defaults", None), dict):
        return sorted(factory.defaults)
    sig = inspect.signature(factory)
    if any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values()):
        return None
    return sorted(sig.parameters)


#: fields added after a committed run, per spec: left out of the profile hash and the stage
#: keys while at this default, so the committed runs' hash and keys stay what they were
LATE_DEFAULTS: dict[str, dict[str, Any]] = {"lora": {"dropout_sampler": "torch"}}


def drop_late_defaults(spec: str, dumped: dict[str, Any]) -> dict[str, Any]:
    """``dumped`` (a spec's ``model_dump``) without its ``LATE_DEFAULTS`` fields at their default."""
    late = LATE_DEFAULTS.get(spec, {})
    return {k: v for k, v in dumped.items() if not (k in late and v == late[k])}


class LoraSpec(_Spec):
    r: Count = 16  # LoRA rank
    alpha: Count = 32  # LoRA scaling (alpha / r)
    dropout: Annotated[float, Strict(), Ge(0), Lt(1)] = 0.05  # LoRA dropout, in [0, 1)
    # layers adapted: "all-linear" (peft: every linear layer but the output head, the same
    # coverage for every architecture, so the weak-model ablation compares models, not LoRA
    # placements) or a list of module names
    target_modules: Literal["all-linear"] | list[str] = "all-linear"
    # how SFT draws the dropout mask on a CPU: "torch" (nn.Dropout, one random number per
    # element) or "sparse" (cowest.dropout: the same distribution from the dropped positions
    # only; an SFT step 1.29x faster for SmolLM2 and 1.14x for Gemma-3 on 2 cores, measured in
    # results/benchmarks/dropout_lever.json; other random numbers, so other trained weights).
    # Added after the committed runs: at "torch" it is left out of the profile hash and the
    # SFT stage key, which stay what they were (LATE_DEFAULTS).
    dropout_sampler: Literal["torch", "sparse"] = "torch"


class TrainSpec(_Spec):
    epochs: PosNum  # passes over the training set (fractions allowed)
    learning_rate: PosNum  # peak learning rate
    batch_size: Count  # examples per device step
    grad_accum: Count = 1  # steps accumulated per optimizer update
    max_length: Annotated[int, Strict(), Ge(16)] = 384  # tokens per example (prompt + target)
    trl: dict[str, Any] = {}  # passed as is to trl.SFTConfig (scheduler, warmup...)


class DPOSpec(_Spec):
    epochs: PosNum  # passes over the preference pairs
    learning_rate: PosNum  # peak learning rate
    batch_size: Count  # pairs per device step
    grad_accum: Count = 1  # steps accumulated per optimizer update
    max_length: Annotated[int, Strict(), Ge(16)] = 384  # tokens per pair side (prompt + answer)
    beta: PosNum = 0.1  # DPO temperature
    loss_type: DPOLoss = "sigmoid"  # any TRL DPO loss type
    trl: dict[str, Any] = {}  # passed as is to trl.DPOConfig


class DraftServerSpec(_Spec):
    """The weak model's drafts from an OpenAI-compatible server instead of transformers."""

    # None: a local llama.cpp server on the weak model's offline GGUF, its adapter converted to
    # a GGUF LoRA (cowest.lora_gguf); a URL: a vLLM server started with --enable-lora, the
    # adapter loaded by name through its /v1/load_lora_adapter (the server must see the path)
    base_url: str | None = None
    api_key_env: str | None = None  # the key's environment variable, for a base_url that needs one
    n_threads: Count = 2  # local llama.cpp server threads
    n_ctx: Count = 1024  # local llama.cpp context length
    concurrency: Count = 1  # requests in flight


class WeakSpec(_Spec):
    name: str  # label used in tables and paths
    model: str  # offline asset name (cowest.assets), hub id, or local folder
    sft: TrainSpec  # supervised fine-tuning on the task's format targets
    dpo: DPOSpec  # preference alignment on the strong model's feedback
    quantization: Literal["none", "4bit"] = "none"  # 4bit = QLoRA (NF4, bitsandbytes)
    revision: str | None = None  # hub commit of `model` (None: the latest, unpinned; offline assets are pinned by sha256)
    lora: LoraSpec = LoraSpec()  # adapter shape
    max_new_tokens: Count = 64  # draft length
    gen_batch_size: Count = 16  # prompts per generation batch
    draft_server: DraftServerSpec | None = None  # drafts from a server (llama.cpp, vLLM) instead of transformers


class StrongSpec(_Spec):
    name: str  # label used in tables, the cache and the ledger
    model: str  # model id sent to the API; for backend "local", an offline asset name
    backend: Literal["local", "api"] = "local"  # local: llama.cpp server started by the run
    base_url: str | None = None  # api backend: OpenAI-compatible endpoint
    api_key_env: str | None = None  # name of the environment variable holding the key
    mode: Literal["chat", "completion"] = "chat"  # completion for base models
    max_tokens: Count = 128  # completion length limit
    # an output without its answer line (cut by max_tokens, or ended without it) gets one more call of at most this
    # many tokens that asks for the answer line (`cowest.collaborate`); null: no such call
    answer_tokens: Count | None = 16
    temperature: Temperature = 0.0  # sampling temperature, in [0, 2]
    top_p: Annotated[float, Strict(), Gt(0), Le(1)] = 1.0  # nucleus sampling, in (0, 1]
    system_prompt: str | None = None  # chat mode: a system message before every prompt
    extra_body: dict[str, Any] = {}  # extra fields of every request body
    n_threads: Count = 2  # local backend: llama.cpp threads
    servers: Annotated[int, Strict(), Ge(1), Le(16)] = 1  # local backend: llama.cpp servers, n_threads each
    n_ctx: Count = 2048  # local backend: context size
    concurrency: Count = 1  # parallel requests (local backend: at most one in flight per server)
    timeout_s: PosNum = 120.0  # per request
    max_retries: NonNegInt = 4  # retries of a failed request
    price_in_per_mtok: NonNegNum = 0.0  # USD per 1M prompt tokens
    price_out_per_mtok: NonNegNum = 0.0  # USD per 1M completion tokens
    free: Annotated[bool, Strict()] = False  # true for a server you run yourself: no prices needed
    stands_in_for: str | None = None  # the paper's model this one replaces (e.g. a retired API model)


class CollabSpec(_Spec):
    format: Format = "cot"  # the weak model's draft format
    n_queries: Count = 100  # training queries mined for preferences (per task)
    k: Count = 4  # drafts sampled per query
    temperature: Temperature = 0.8  # draft sampling temperature
    evaluator: Evaluator = "gold"  # who scores the drafts
    judge: str | None = None  # strong-model name used as judge (default: the main strong model)
    pairing: Literal["all", "extremes"] = "all"  # see cowest.preferences.make_pairs
    max_pairs_per_query: Count = 4  # preference pairs kept per query
    # DPO runs of each aligned method (CoWest, RLWF) in the main table, seeds seed, seed+1, ...;
    # all start from the one SFT checkpoint and train on the one mined pair set
    dpo_seeds: Count = 1


class FlareSpec(_Spec):
    threshold: Probability = 0.4  # retrieve when a drafted token's probability is below this
    top_k: Count = 2  # passages retrieved
    max_steps: Count = 3  # sentences generated, each may trigger one retrieval
    # tokens drafted with log-probabilities per look-ahead (FLARE's "next sentence"); null = the
    # whole answer. Set it for local servers, where each log-probability token costs ~0.1 s.
    lookahead_tokens: Count | None = None


class SuperICLSpec(_Spec):
    n_demos: NonNegInt = 4  # in-context examples from the training split


class BaselineSpec(_Spec):
    flare: FlareSpec = FlareSpec()  # FLARE-style active retrieval
    supericl: SuperICLSpec = SuperICLSpec()  # SuperICL (weak model's answer in the prompt)
    # test items of FLARE and SuperICL in the main table: a prefix of each task's test split
    # (default: all). Their rows and paired tests then use those items; the table's n says so.
    n_test: Count | None = None


class AblationSpec(_Spec):
    tasks: list[str] = []  # tasks the ablations run on
    n_test: Count = 100  # test questions per ablation cell (a prefix of the test split)
    formats: list[Format] = ["direct", "knowledge", "cot"]  # draft formats compared
    strong_models: list[str] = []  # names from strong_models
    weak_models: list[str] = []  # names from weak_models
    volumes: list[Count] = []  # preference pairs used for DPO
    evaluators: list[Evaluator] = ["gold", "llm_judge"]  # feedback sources compared
    rounds: Count = 2  # iterated alignment rounds
    # training queries mined for each ablation system (formats, strong and weak models, rounds,
    # evaluators): a prefix of the task's mined queries; default: all of them. The volume
    # ablation always subsets the main table's pool.
    n_queries: Count | None = None


class GatesSpec(_Spec):
    """The miniature's division-of-labour gates (``cowest.gates``), measured on validation items."""

    n_items: Count = 24  # validation items per gate and task
    weak_knowledge: Probability = 0.8  # the SFT weak model states the fact on held-out wordings
    strong_skill: Probability = 0.8  # the strong model's accuracy with the fact given in the question
    weak_gap: Probability = 0.2  # the weak model is at least this much worse at the same items
    draft_use: Probability = 0.5  # refinements that fix a right-fact, wrong-step draft
    max_no_answer: Probability = 0.02  # strong outputs without a readable answer, at most
    candidates: list[str] = []  # strong models the gates compare (names from strong_models)


class Profile(_Spec):
    name: str  # results go to results/<name>/
    description: str  # one line for logs and reports
    tasks: Annotated[list[TaskSpec], Field(min_length=1)]  # the domains evaluated
    weak_models: Annotated[list[WeakSpec], Field(min_length=1)]  # the first is the main weak model
    strong_models: Annotated[list[StrongSpec], Field(min_length=1)]  # the first is the main strong model
    seed: Int = 0  # seeds data splits, sampling and training
    collab: CollabSpec = CollabSpec()  # preference mining
    baselines: BaselineSpec = BaselineSpec()  # comparison methods
    ablations: AblationSpec = AblationSpec()  # ablation grid
    gates: GatesSpec = GatesSpec()  # the division-of-labour gates (synthetic domains)
    budget_usd: NonNegNum | None = None  # stop before a paid call would pass this
    cache_mode: Literal["readwrite", "replay", "off"] = "readwrite"  # strong-model call cache
    _source: str = PrivateAttr("")  # the file it was loaded from (filled by the loader)
    _overrides: tuple[str, ...] = PrivateAttr(())  # the `--set` overrides applied

    # -- lookups ------------------------------------------------------------------
    @property
    def source(self) -> str:
        return self._source

    @property
    def overrides(self) -> tuple[str, ...]:
        return self._overrides

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

    def n_queries(self, task: str) -> int:
        """The training queries mined for preferences on a task (its own, else collab's)."""
        return self.task(task).n_queries or self.collab.n_queries

    def ablation_queries(self, task: str) -> int | None:
        """The mined queries of an ablation system on a task (None: all of the task's)."""
        n, full = self.ablations.n_queries, self.n_queries(task)
        return None if n is None or n >= full else n

    def n_dpo_seeds(self, task: str) -> int:
        """DPO runs per aligned method in a task's main table (its own, else collab's)."""
        return self.task(task).dpo_seeds or self.collab.dpo_seeds

    def strong_for(self, task: str) -> StrongSpec:
        """The strong model a task uses by default (the paper uses GPT-3.5 for Prosocial)."""
        t = self.task(task)
        return self.strong_model(t.strong) if t.strong else self.strong

    def to_dict(self) -> dict[str, Any]:
        """The resolved profile as plain data, less the fields of ``LATE_DEFAULTS`` at their default."""
        out = self.model_dump(mode="json")
        for w in out["weak_models"]:
            w["lora"] = drop_late_defaults("lora", w["lora"])
        return out

    def hash(self) -> str:
        return stable_hash(self.to_dict())


def _by_name(items: Sequence[Any], name: str, where: str, source: str) -> Any:
    for it in items:
        if it.name == name:
            return it
    raise ConfigError(f"{source}: no entry named {name!r} in {where} (have: {[i.name for i in items]})")


# ----------------------------------------------------------------------------- errors
Loc = tuple[str | int, ...]


def _key(loc: Loc) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else f".{part}" if out else str(part)
    return out or "top level"


def _fields_at(loc: Loc) -> list[str]:
    """The keys allowed in the mapping at `loc`."""
    cls: Any = Profile
    for part in loc:
        if isinstance(part, str):
            ann = cls.model_fields[part].annotation
            cls = typing.get_args(ann)[0] if typing.get_origin(ann) is list else ann
        if not (isinstance(cls, type) and issubclass(cls, BaseModel)):
            return []
    return sorted(cls.model_fields)


_TYPES = {"int_type": "an integer", "float_type": "a number", "string_type": "a string",
          "list_type": "a list", "dict_type": "a mapping", "model_type": "a mapping"}
_BOUNDS = {"greater_than_equal": (">=", "ge"), "greater_than": (">", "gt"),
           "less_than_equal": ("<=", "le"), "less_than": ("<", "lt")}
_QUOTED = r"'([^']*)'"  # the allowed values in a literal_error's "expected"


def _message(err: Any) -> tuple[Loc, str]:
    """A pydantic error as (key path, message)."""
    loc, kind, value, ctx = tuple(err["loc"]), err["type"], err.get("input"), err.get("ctx") or {}
    if kind == "unknown_param":
        return loc + (ctx["key"],), err["msg"]
    if kind in _BOUNDS:
        op, k = _BOUNDS[kind]
        return loc, f"must be {op} {ctx[k]:g} (got {value!r})"
    if kind == "extra_forbidden":
        return loc, f"unknown key {loc[-1]} (allowed here: {', '.join(_fields_at(loc[:-1]))})"
    if kind == "missing":
        return loc, f"missing required key {loc[-1]}"
    if kind in _TYPES:
        return loc, f"expected {_TYPES[kind]}, got {value!r}"
    if kind == "literal_error":
        return loc, f"{value!r} is not one of {re.findall(_QUOTED, ctx['expected'])}"
    if kind == "too_short":
        return loc, f"needs at least {ctx['min_length']} entry (got {value!r})"
    return loc, err["msg"]


def _cross_check(pr: Profile) -> list[tuple[Loc, str]]:
    """Checks that span sections: names referenced elsewhere must exist and be unique."""
    errors: list[tuple[Loc, str]] = []
    names = {sec: [e.name for e in getattr(pr, sec)] for sec in _NAMED}

    def ref(loc: Loc, name: str | None, sec: str) -> None:
        if name is not None and name not in names[sec]:
            errors.append((loc, f"no entry named {name!r} in {sec} (have: {names[sec]})"))

    for sec, have in names.items():
        for i, n in enumerate(have):
            if n in have[:i]:
                errors.append(((sec, i, "name"), f"duplicate name {n!r} in {sec}"))
    ref(("collab", "judge"), pr.collab.judge, "strong_models")
    for i, t in enumerate(pr.tasks):
        ref(("tasks", i, "strong"), t.strong, "strong_models")
    for sec in _NAMED:
        for i, n in enumerate(getattr(pr.ablations, sec)):
            ref(("ablations", sec, i), n, sec)
    for i, n in enumerate(pr.gates.candidates):
        ref(("gates", "candidates", i), n, "strong_models")
    for i, s in enumerate(pr.strong_models):
        if s.backend == "api" and not s.base_url:
            errors.append((("strong_models", i, "base_url"), f"{s.name}: backend 'api' needs base_url"))
    return errors


# ----------------------------------------------------------------------------- loading
_NAMED = ("tasks", "weak_models", "strong_models")  # lists of entries merged by name


def _show(path: Path) -> str:
    return str(path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path)


def _resolve(ref: str | Path, base: Path | None = None) -> Path:
    """A profile name (configs/<name>.yaml) or a YAML path (relative to `base` or the cwd)."""
    p = Path(ref)
    if p.suffix in (".yaml", ".yml"):
        p = (base / p if base and not p.is_absolute() else p).resolve()
    else:
        p = CONFIG_DIR / f"{ref}.yaml"
    if not p.exists():
        known = sorted(q.stem for q in CONFIG_DIR.glob("*.yaml"))
        raise ConfigError(f"profile {str(ref)!r} not found ({p}); known profiles: {known}")
    return p


def _read(path: Path, chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The YAML mapping of `path`, with its `extends` chain merged in."""
    where = _show(path)
    if path in chain:
        cycle = " -> ".join(_show(p) for p in (*chain, path))
        raise ConfigError(f"{_show(chain[0])}: extends: cycle {cycle}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f" (line {mark.line + 1})" if mark else ""
        what = " ".join(str(getattr(e, "problem", "") or e).split())
        raise ConfigError(f"{where}: not valid YAML{line}: {what}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: top level: expected a mapping, got {data!r}")
    parent = data.pop("extends", None)
    if parent is None:
        return data
    if not isinstance(parent, str):
        raise ConfigError(f"{where}: extends: expected a profile name or path, got {parent!r}")
    if "name" not in data:
        raise ConfigError(f"{where}: name: a profile that extends {parent!r} must set its own "
                          f"name (results are stored by name)")
    try:
        ppath = _resolve(parent, path.parent)
    except ConfigError as e:
        raise ConfigError(f"{where}: extends: {e}") from None
    return _merge(_read(ppath, (*chain, path)), data)


def _merge(base: Any, over: Any, top: bool = True) -> Any:
    """`over` on top of `base`: mappings deeply, named lists by name, anything else replaced."""
    if not (isinstance(base, dict) and isinstance(over, dict)):
        return copy.deepcopy(over)
    out = dict(base)
    for k, v in over.items():
        if top and k in _NAMED and isinstance(out.get(k), list) and isinstance(v, list):
            merged = list(out[k])
            for entry in v:
                i = _index_of(merged, entry.get("name") if isinstance(entry, dict) else None)
                if i is None:
                    merged.append(copy.deepcopy(entry))
                else:
                    merged[i] = _merge(merged[i], entry, top=False)
            out[k] = merged
        else:
            out[k] = _merge(out[k], v, top=False) if k in out else copy.deepcopy(v)
    return out


def _index_of(items: list[Any], name: Any) -> int | None:
    for i, e in enumerate(items):
        if name is not None and isinstance(e, dict) and e.get("name") == name:
            return i
    return None


def _apply(data: dict[str, Any], text: str, path: Path) -> Loc:
    """Apply one `--set KEY=VALUE` to `data`; returns the key path it set."""
    where = f"{_show(path)} (--set {text})"
    key, sep, raw = text.partition("=")
    parts = key.strip().split(".")
    if not sep or not all(parts):
        raise ConfigError(f"{where}: expected KEY=VALUE, e.g. collab.k=8")
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError as e:
        raise ConfigError(f"{where}: {key}: value is not valid YAML: {' '.join(str(e).split())}") from None
    node: Any = data
    loc: list[str | int] = []
    while parts:
        if isinstance(node, list):  # by name (names may hold dots) or by position
            j = next((j for j in range(len(parts), 0, -1)
                      if _index_of(node, ".".join(parts[:j])) is not None), 0)
            if j:
                step: str | int = _index_of(node, ".".join(parts[:j]))  # type: ignore[assignment]
                del parts[:j]
            elif parts[0].isdigit() and int(parts[0]) < len(node):
                step = int(parts.pop(0))
            else:
                have = [e.get("name") if isinstance(e, dict) else i for i, e in enumerate(node)]
                raise ConfigError(f"{where}: {_key(tuple(loc))}: no entry named {parts[0]!r} "
                                  f"and no such position (have: {have})")
        elif isinstance(node, dict):
            step = parts.pop(0)
        else:
            raise ConfigError(f"{where}: {_key(tuple(loc))}: is not a mapping or a list")
        loc.append(step)
        if not parts:
            node[step] = value
        elif isinstance(node, dict) and node.get(step) is None:
            node[step] = {}
        node = node[step] if parts else None
    return tuple(loc)


def load_profile(name_or_path: str | Path, overrides: Sequence[str] = ()) -> Profile:
    """Load `configs/<name>.yaml` or a YAML path (with its `extends` chain and the `--set`
    `overrides`, KEY=VALUE) into a checked `Profile`; a `ConfigError` lists every problem."""
    path = _resolve(name_or_path)
    data = _read(path)
    overrides = tuple(overrides)
    set_at = [(_apply(data, ov, path), ov) for ov in overrides]

    def line(loc: Loc, msg: str) -> str:
        hits = [ov for at, ov in set_at if loc[: len(at)] == at]
        where = f"{_show(path)} (--set {hits[-1]})" if hits else _show(path)
        return f"{where}: {_key(loc)}: {msg}"

    try:
        profile = Profile.model_validate(data)
    except ValidationError as e:
        raise ConfigError("\n".join(line(*_message(err)) for err in e.errors())) from None
    problems = _cross_check(profile)
    if problems:
        raise ConfigError("\n".join(line(*p) for p in problems))
    profile._source = str(path)
    profile._overrides = overrides
    return profile
