"""A PEFT LoRA adapter as a llama.cpp LoRA adapter (GGUF), for server-backed weak drafts.

llama.cpp applies a GGUF adapter on top of the quantised base model it serves
(``llama_cpp.server --lora_path``), so the weak model's drafts can come from a llama.cpp server
through the same client and request cache as the strong model's answers. This writes what
llama.cpp's ``convert_lora_to_gguf.py`` writes, with the ``gguf`` package alone:

- metadata ``general.architecture`` (the base GGUF's), ``general.type = adapter``,
  ``adapter.type = lora``, ``adapter.lora.alpha``;
- for each adapted layer ``<gguf name>.weight.lora_a`` (PEFT's ``lora_A``, ``[r, in]``) and
  ``.lora_b`` (``lora_B``, ``[out, r]``), in float32;
- for the llama architecture, the rows of ``lora_b`` of the q and k projections permuted as
  the base weights were when the model was converted (llama.cpp's rotary layout).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

_PEFT_NAME = re.compile(r"^base_model\.model\.(?P<layer>.+)\.lora_(?P<ab>[AB])\.weight$")


def _permute(w: np.ndarray, n_head: int, n_head_kv: int | None) -> np.ndarray:
    """convert_hf_to_gguf.py's LlamaModel.permute (rows grouped per head, halves interleaved)."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _field(reader, key: str):
    f = reader.fields.get(key)
    if f is None:
        return None
    return f.parts[f.data[0]].tolist()[0] if f.data else None


def peft_to_gguf(adapter_dir: Path, base_gguf: Path, out_path: Path) -> Path:
    """Write the GGUF adapter of the PEFT adapter in ``adapter_dir`` for the model ``base_gguf``."""
    import gguf
    from safetensors.numpy import load_file

    adapter_dir, out_path = Path(adapter_dir), Path(out_path)
    cfg = json.loads((adapter_dir / "adapter_config.json").read_text())
    tensors = load_file(str(adapter_dir / "adapter_model.safetensors"))
    reader = gguf.GGUFReader(str(base_gguf))
    field = reader.fields["general.architecture"]
    arch_name = bytes(field.parts[field.data[0]]).decode()
    arch = next(a for a, n in gguf.MODEL_ARCH_NAMES.items() if n == arch_name)
    n_blocks = int(_field(reader, f"{arch_name}.block_count"))
    n_head = int(_field(reader, f"{arch_name}.attention.head_count"))
    n_head_kv = _field(reader, f"{arch_name}.attention.head_count_kv")
    names = gguf.get_tensor_name_map(arch, n_blocks)
    base_names = {t.name for t in reader.tensors}

    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(out_path.name + ".partial")
    writer = gguf.GGUFWriter(str(tmp), arch_name)
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, float(cfg["lora_alpha"]))
    written = 0
    for key in sorted(tensors):
        m = _PEFT_NAME.match(key)
        if m is None:
            continue  # not a LoRA matrix (e.g. a saved embedding): llama.cpp adapters carry only LoRA
        hf = m.group("layer")
        gg = names.get_name(hf + ".weight", try_suffixes=(".weight",))
        if gg is None or gg not in base_names:
            raise ValueError(f"{key}: no tensor {gg or hf!r} in {base_gguf.name}; the adapter does not fit it")
        data = tensors[key].astype(np.float32)
        if m.group("ab") == "B" and arch == gguf.MODEL_ARCH.LLAMA and hf.endswith(("q_proj", "k_proj")):
            data = _permute(data, n_head, n_head if hf.endswith("q_proj") else n_head_kv)
        writer.add_tensor(f"{gg}.lora_{m.group('ab').lower()}", np.ascontiguousarray(data))
        written += 1
    if not written:
        raise ValueError(f"{adapter_dir}: no LoRA matrices found")
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    tmp.replace(out_path)
    return out_path
