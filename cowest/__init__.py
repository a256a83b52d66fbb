"""CoWest: synergistic weak-strong collaboration by aligning preferences (ACL 2025), reproduced.

The map, one job per module:

    Settings and places
        config       profiles (YAML) as checked pydantic models; `extends:` and `--set`
        paths        the project's folders and the results root
        assets       the offline model registry (GGUF files from pip packages, pinned sha256)
        prompts      every prompt, as a plain-text template (stages key on its text)
    The method's parts
        tasks        task registry: real datasets, synthetic domains (one module each),
                     extraction, per-item scoring and intervals, the paper's reported numbers
        metrics      EM, token F1, accuracy, macro-F1, bootstrap intervals, paired tests
        weak         the weak model: loading (LoRA / 4-bit QLoRA) and generation
        client       the strong model over an OpenAI-compatible API: requests, retries, budget checks
        replies      one request sent and its reply: Completion, parsing, log-probs, hiding the key
        endpoint     where requests go: an API URL, or local servers started at the first cache miss
        server       local llama.cpp servers for the offline strong models (LocalServer, ServerPool)
        childproc    child processes that die with ours (spawn, SIGTERM/atexit, socket ownership)
        cache        request cache (SQLite, replayable), keyed by what changes an answer
        ledger       the cost ledger: every call, the budget cap, prompt-token bounds
        sqlstore     the SQLite file that cache and ledger share (per-thread connections, WAL)
        collaborate  strong alone, strong refining a weak draft
        preferences  evaluators, the delta rule, pairing, mining
        train        SFT and DPO over TRL (one config builder and one trainer call each)
        baselines    FLARE and SuperICL
    Running it
        artifacts    files on disk: atomic writes, JSONL, and the stage store (folders keyed by inputs)
        pipeline     `Pipeline`: the stages of a run, orchestration only
        notebooks    the numbered notebooks (their list) and `open_run`, the call that opens each
        execute      papermill rendering of the notebooks, the manifest
        plan         the dry run: planned strong-model calls and cost
        report       tables (CSV + Markdown) and figures (PNG + PDF)
"""

__version__ = "0.2.0"


class CowestWarning(UserWarning):
    """A warning of the project's own (rendered notebooks show these, and only these)."""
