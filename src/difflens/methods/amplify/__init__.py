"""Amplification: make the finetune's difference louder.

* Logit-diff amplification (``runner``): sample from softmax(z_ft + α(z_ft − z_base)) on neutral
  prompts (engine: :mod:`difflens.models.amplify`), grade the rate of the finetune's domain and
  the coherence per α, and find the largest coherent α.
* LoRA weight amplification (``lora``): scale an adapter per layer range and module kind and
  export it as a normal PEFT adapter.

Modules: ``config``, ``grade`` (rate rules), ``runner``, ``result`` (artifacts), ``report``
(HTML section), ``summary`` (text), ``lora``, ``cli`` (``difflens amplify``).  Importing this
package is cheap: torch and the models load only when a run starts.
"""

from __future__ import annotations

from typing import Any

__all__ = ["AmplifyConfig", "AmplifyResult"]


def __getattr__(name: str) -> Any:
    if name == "AmplifyConfig":
        from difflens.methods.amplify.config import AmplifyConfig

        return AmplifyConfig
    if name == "AmplifyResult":
        from difflens.methods.amplify.result import AmplifyResult

        return AmplifyResult
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
