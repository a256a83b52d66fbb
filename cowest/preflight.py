"""`--check`: what a profile needs before it spends time or money, checked in seconds.

One line per check, with the fix when it fails. Nothing here trains, loads a model's
weights or sends a paid request (an API model's existence is asked with the free
``models.retrieve``). Checks:

- the API key variable of every API strong model is set (never printed);
- every API base URL answers (any HTTP reply counts; a refused or timed-out connection fails);
- every API model exists there (skipped without a key or an answering URL);
- every API model has a price, or is declared ``free``; the dry run's cost fits ``budget_usd``;
- every hub weak model and dataset is reachable at its pinned revision (an unpinned one gets
  the commit to pin); offline assets are on disk;
- a GPU with enough memory for the planned hub weak models (4-bit QLoRA; measured 12.5 GiB
  SFT and 15.7 GiB DPO peak for Llama-3-8B on an H200, ``results/benchmarks/gpu_check.md``).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from cowest import assets
from cowest.config import Profile

TIMEOUT_S = 3.0  # per network check: the whole preflight stays within seconds offline
# GiB of GPU memory for 4-bit QLoRA SFT + DPO by billions of parameters: ~2 GiB per billion
# (Llama-3-8B measured 15.7 GiB at DPO's peak, results/benchmarks/gpu_check.md), at least 6
GIB_PER_BILLION = 2.0


@dataclass(frozen=True)
class Check:
    status: str  # "ok", "FAIL" or "skip"
    what: str
    fix: str = ""

    def line(self) -> str:
        tail = f" -> fix: {self.fix}" if self.status == "FAIL" and self.fix else ""
        return f"  {self.status:<4}  {self.what}{tail}"


def _used_strong(cfg: Profile) -> list:
    names = {cfg.strong.name, *(cfg.strong_for(t.name).name for t in cfg.tasks), *cfg.ablations.strong_models}
    if cfg.collab.judge:
        names.add(cfg.collab.judge)
    return [s for s in cfg.strong_models if s.name in names]


def _answers(url: str) -> str | None:
    """None when `url` answers HTTP at all; else why not."""
    import httpx

    try:
        httpx.get(url.rstrip("/") + "/models", timeout=TIMEOUT_S)
        return None
    except httpx.HTTPError as e:
        return f"{type(e).__name__}"


def check_api(cfg: Profile) -> list[Check]:
    out: list[Check] = []
    api = [s for s in _used_strong(cfg) if s.backend == "api"]
    reachable: dict[str, str | None] = {}
    for s in api:
        key = os.environ.get(s.api_key_env or "") if s.api_key_env else None
        if s.api_key_env:
            out.append(Check("ok", f"{s.name}: {s.api_key_env} is set") if key else Check(
                "FAIL", f"{s.name}: {s.api_key_env} is not set",
                f"export {s.api_key_env}=... (read from the environment, never written to disk)"))
        if s.base_url not in reachable:
            reachable[s.base_url] = _answers(s.base_url)
            why = reachable[s.base_url]
            out.append(Check("ok", f"{s.base_url} answers") if why is None else Check(
                "FAIL", f"{s.base_url} does not answer ({why})",
                "check the network, or start the server (scripts/serve_vllm.sh for the 70B models)"))
        if not s.free and s.price_in_per_mtok == 0 and s.price_out_per_mtok == 0:
            out.append(Check("FAIL", f"{s.name}: no price, so the budget cap cannot count it",
                             f"set price_in_per_mtok and price_out_per_mtok of {s.name}, or free: true for a "
                             "server you run yourself"))
        if reachable[s.base_url] is None and (key or not s.api_key_env):
            out.append(_model_exists(s, key))
        else:
            out.append(Check("skip", f"{s.name}: model {s.model} not looked up (no key or no answer)"))
    return out


def _model_exists(spec, key: str | None) -> Check:
    from openai import NotFoundError, OpenAI, OpenAIError

    client = OpenAI(base_url=spec.base_url, api_key=key or "none", max_retries=0, timeout=TIMEOUT_S * 2)
    try:
        client.models.retrieve(spec.model)
        return Check("ok", f"{spec.name}: {spec.model} is served at {spec.base_url}")
    except NotFoundError:
        return Check("FAIL", f"{spec.name}: {spec.model} is not served at {spec.base_url} (retired or misspelled?)",
                     f"name a current model in strong_models.{spec.name}.model")
    except OpenAIError as e:
        return Check("FAIL", f"{spec.name}: looking up {spec.model} failed ({type(e).__name__})",
                     "check the key and its permissions")


def check_budget(cfg: Profile) -> list[Check]:
    from cowest.plan import plan

    cost = sum(line.cost for line in plan(cfg))
    if cfg.budget_usd is None:
        return [Check("ok" if cost == 0 else "FAIL", f"planned cost ${cost:,.2f} (no budget_usd set)",
                      "set budget_usd in the profile so the run stops before overspending")]
    ok = cost <= cfg.budget_usd
    return [Check("ok" if ok else "FAIL", f"planned cost ${cost:,.2f} (an upper bound) against budget_usd "
                  f"${cfg.budget_usd:,.2f}", "raise budget_usd or shrink the profile (see --dry-run)")]


def _offline() -> bool:
    return any(os.environ.get(v, "").lower() in ("1", "true", "yes") for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


def _hub(kind: str, repo: str, revision: str | None, info: Callable) -> Check:
    if _offline():
        return Check("FAIL", f"{kind} {repo}: not checked, hub offline mode is set",
                     "unset HF_HUB_OFFLINE / HF_DATASETS_OFFLINE, or download it and give a local path")
    try:
        meta = info(repo, revision=revision, timeout=TIMEOUT_S)
    except Exception as e:  # noqa: BLE001 - gated, missing, offline: each is one line
        name = type(e).__name__
        fix = (f"accept the license at https://huggingface.co/{repo} and log in (huggingface-cli login or HF_TOKEN)"
               if "Gated" in name or "401" in str(e) or "403" in str(e) else
               "check the id and revision, and the network")
        return Check("FAIL", f"{kind} {repo}@{revision or 'latest'}: {name}", fix)
    if revision:
        return Check("ok", f"{kind} {repo} at {revision[:12]}")
    return Check("ok", f"{kind} {repo}: reachable, unpinned; to pin it: revision: {meta.sha}")


def check_hub(cfg: Profile) -> list[Check]:
    from cowest.execute import _task_class

    out: list[Check] = []
    hub_models = [w for w in cfg.weak_models if w.model not in assets.ASSETS and not Path(w.model).is_dir()]
    datasets = [(t.params.get("hub_id") or getattr(_task_class(t.name), "hub_default", ""), t.params.get("revision"))
                for t in cfg.tasks if not t.params.get("path")]
    datasets = [d for d in datasets if d[0]]
    if hub_models or datasets:
        from huggingface_hub import HfApi

        api = HfApi()
        out += [_hub("model", w.model, w.revision, api.model_info) for w in hub_models]
        out += [_hub("dataset", repo, rev, api.dataset_info) for repo, rev in dict.fromkeys(datasets)]
    local = dict.fromkeys([w.model for w in cfg.weak_models if w.model in assets.ASSETS]
                          + [s.model for s in cfg.strong_models if s.backend == "local"])
    for name in local:
        ok = assets.is_present(name)
        out.append(Check("ok", f"offline model {name} is on disk") if ok else Check(
            "FAIL", f"offline model {name} is missing", "./reproduce.sh setup (it joins and verifies the models)"))
    return out


def _billions(model: str) -> float | None:
    m = re.search(r"(\d+(?:\.\d+)?)\s*[bB]\b", model.replace("-", " "))
    if m:
        return float(m.group(1))
    return 3.8 if "phi-3-mini" in model.lower() else None


def check_gpu(cfg: Profile) -> list[Check]:
    hub_models = [w for w in cfg.weak_models if w.model not in assets.ASSETS and not Path(w.model).is_dir()]
    if not hub_models:
        return [Check("ok", "no GPU needed (the offline weak models train on the CPU)")]
    need = max(max(6.0, GIB_PER_BILLION * (_billions(w.model) or 8.0)) for w in hub_models)
    import torch

    if not torch.cuda.is_available():
        return [Check("FAIL", f"no CUDA GPU; the planned weak models need about {need:.0f} GiB (4-bit QLoRA)",
                      "run on a machine with a CUDA GPU and a CUDA build of torch")]
    free, total = torch.cuda.mem_get_info()
    ok = free / 2**30 >= need
    return [Check("ok" if ok else "FAIL", f"GPU {torch.cuda.get_device_name(0)}: {free / 2**30:.0f} of "
                  f"{total / 2**30:.0f} GiB free; about {need:.0f} GiB needed",
                  "free the GPU, or use a smaller weak model")]


def run_checks(cfg: Profile) -> list[Check]:
    return [*check_api(cfg), *check_budget(cfg), *check_hub(cfg), *check_gpu(cfg)]


def needs_check(cfg: Profile) -> bool:
    """Whether a run of this profile reaches outside the machine (paid API, hub, GPU)."""
    return any(s.backend == "api" for s in _used_strong(cfg)) or any(
        w.model not in assets.ASSETS and not Path(w.model).is_dir() for w in cfg.weak_models)


def print_checks(cfg: Profile) -> bool:
    """Run and print every check; True when none failed."""
    print(f"[cowest] checking profile {cfg.name!r} ({cfg.source})")
    results = run_checks(cfg)
    for c in results:
        print(c.line())
    failed = sum(c.status == "FAIL" for c in results)
    print(f"[cowest] {len(results)} checks, {failed} failed" + ("" if failed else ": ready to run"))
    return failed == 0
