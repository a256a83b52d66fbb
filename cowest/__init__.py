"""CoWest: synergistic weak-strong collaboration by aligning preferences (ACL 2025), reproduced.

Modules, by what they are:
    config       profiles (YAML) as checked, typed objects
    assets       the offline model registry (GGUF files from pip packages)
    tasks        task registry: real datasets and synthetic domains, formats, extraction
    metrics      EM, token F1, accuracy, macro-F1, bootstrap intervals, paired tests
    prompts      plain-text prompt templates, versioned
    weak         the weak model: loading (LoRA / 4-bit QLoRA) and generation
    strong       the strong model: OpenAI-compatible client, local llama.cpp server
    cache        request cache (SQLite, replayable) and the cost ledger
    collaborate  strong alone, strong refining a weak draft
    preferences  evaluators, the delta rule, pairing
    train        SFT and DPO over TRL
    baselines    FLARE and SuperICL
    pipeline     the stages of a run, with artifacts on disk
    report       tables and figures
    runner       papermill execution of the notebooks, the manifest
"""

__version__ = "0.1.0"
