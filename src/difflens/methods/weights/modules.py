"""Which linear module a weight is: its layer, its kind, and how it touches the residual stream.

A module *writes* into the residual stream when its output is added to it (attention output,
MLP down projection): ΔW is ``(d_model, d_in)`` and its left-singular vectors live in the
residual stream.  A module *reads* from it when its input is the (normed) residual stream
(q/k/v, gate/up, fused qkv, MLP up): ΔW is ``(d_out, d_model)`` and its right-singular vectors
live there.  Names per family (``tests/tiny.py`` FAMILIES and the usual others):

=============  =====================================  ======================================
family         reads                                   writes
=============  =====================================  ======================================
llama-like     q/k/v_proj, gate_proj, up_proj          o_proj, down_proj
gpt2           attn.c_attn, mlp.c_fc                   attn.c_proj, mlp.c_proj
gpt-neox       query_key_value, dense_h_to_4h          attention.dense, dense_4h_to_h
opt / phi      q/k/v_proj, fc1                         out_proj / dense, fc2
=============  =====================================  ======================================

A name this table does not know falls back to the shape (``d_out == d`` ≠ ``d_in``: writes).
"""

from __future__ import annotations

import re

WRITE, READ = "write", "read"
WRITES = frozenset({"o_proj", "down_proj", "c_proj", "dense", "dense_4h_to_h", "out_proj",
                    "fc2", "w2", "wo"})
READS = frozenset({"q_proj", "k_proj", "v_proj", "qkv_proj", "gate_proj", "up_proj",
                   "gate_up_proj", "c_attn", "c_fc", "query_key_value", "dense_h_to_4h",
                   "fc1", "w1", "w3", "wq", "wk", "wv", "in_proj"})
# "model.layers.3.self_attn.q_proj", "transformer.h.0.attn.c_attn", "gpt_neox.layers.1.mlp..."
_LAYER = re.compile(r"(?:^|\.)(?:layers|h|blocks|layer)\.(\d+)\.(.+)$")


def parse_module(name: str) -> tuple[int | None, str]:
    """``(layer, kind)`` of a module name: ``"model.layers.3.mlp.down_proj"`` → ``(3,
    "mlp.down_proj")``; a module outside the layer stack → ``(None, name)``."""
    match = _LAYER.search(name)
    if match is None:
        return None, name
    return int(match.group(1)), match.group(2)


def residual_role(kind: str, shape: tuple[int, int], hidden: int) -> str | None:
    """``"write"``, ``"read"`` or None (touches the residual stream in neither way we can read).

    Args:
        kind: the module's path inside its layer (``"self_attn.o_proj"``).
        shape: ``(d_out, d_in)`` of ΔW (already in Linear orientation).
        hidden: the model's residual width d.
    """
    d_out, d_in = shape
    last = kind.rsplit(".", 1)[-1]
    if last in WRITES and d_out == hidden:
        return WRITE
    if last in READS and d_in == hidden:
        return READ
    if last in WRITES or last in READS:
        return None  # the name says one thing and the shape another: do not guess
    if d_out == hidden and d_in != hidden:
        return WRITE
    if d_in == hidden and d_out != hidden:
        return READ
    return None


def kind_order(kind: str) -> tuple[int, int, str]:
    """Sort key for heat-map columns: attention before MLP, reads before writes."""
    last = kind.rsplit(".", 1)[-1]
    attention = any(part in kind for part in ("attn", "attention"))
    mlp_read = last in {"gate_proj", "up_proj", "gate_up_proj", "c_fc", "dense_h_to_4h", "fc1",
                        "w1", "w3"}
    block = 0 if attention and not mlp_read else 1
    return block, 1 if last in WRITES else 0, kind
