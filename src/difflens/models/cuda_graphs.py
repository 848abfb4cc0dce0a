"""One decoding step replayed as a CUDA graph over a static KV cache (GPU decoding only).

A decoding step of a small model on a GPU is launch-bound: hundreds of kernel launches, each
a few microseconds of Python and driver time, around microseconds of work.  Captured once as
a CUDA graph, the step is one launch.  Used by :func:`difflens.models.generation.decode` with
``graphs=True``:

* the KV cache is a ``transformers`` ``StaticCache`` (fixed addresses, in-place updates whose
  write position is a device tensor, so a replay writes the next slot by itself);
* the step's inputs (token ids, position ids, the 4-D attention masks ``transformers`` builds
  for a static cache) are copied into fixed buffers before each replay; the masks are built
  outside the graph (their construction may read values on the host);
* hooks present at capture (steering additions, the contiguous head input) are part of the
  graph: the graph lives for one decode call, inside the hooks' context.

Why a captured graph and not ``torch.compile(mode="reduce-overhead")``: steering enters through
forward hooks that change at every call, and dynamo does not guard on module hooks by default
(``skip_nnmodule_hook_guards``), so a compiled forward would keep the strengths it was compiled
with; recompiling per call costs more than it saves.  Capturing costs one extra forward.

Anything unexpected raises; the caller then logs one warning and decodes eagerly.
"""

from __future__ import annotations

from typing import Any

import torch


def sliding_windows_fit(model: Any, slots: int) -> bool:
    """True when no sliding-window cache layer would fill within ``slots`` tokens.

    A full sliding layer rolls its cache on a host-side branch, which a captured graph cannot
    follow; below the window its update is the plain in-place write.
    """
    target = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = target.config.get_text_config(decoder=True)
    window = getattr(config, "sliding_window", None)
    return window is None or slots <= int(window)


class GraphStep:
    """``step(ids (B, 1), width, positions (B, 1)) -> logits (B, V)`` float32 by graph replay.

    The returned logits live in the graph's memory and are overwritten by the next replay:
    consume them first (the decode loop draws its tokens before the next step).
    """

    def __init__(self, model: Any, cache: Any, keyword: str, full_mask: torch.Tensor) -> None:
        self.model, self.cache, self.keyword = model, cache, keyword
        self.full_mask = full_mask  # (B, L + T): prompt mask, then ones
        self.graph: Any = None
        self.inputs: dict[str, Any] = {}
        self.logits: torch.Tensor | None = None
        target = model.get_base_model() if hasattr(model, "get_base_model") else model
        self.config = target.config
        self.dtype = next(model.parameters()).dtype

    def _masks(self, width: int, positions: torch.Tensor) -> Any:
        from transformers.masking_utils import create_masks_for_generate

        batch = positions.shape[0]
        return create_masks_for_generate(
            config=self.config,
            inputs_embeds=torch.empty((batch, 1, 0), dtype=self.dtype, device=positions.device),
            attention_mask=self.full_mask[:, :width], cache=self.cache, position_ids=positions)

    def _call(self, ids: torch.Tensor, masks: Any, positions: torch.Tensor) -> torch.Tensor:
        out = self.model(input_ids=ids, attention_mask=masks, position_ids=positions,
                         use_cache=True, logits_to_keep=1, **{self.keyword: self.cache})
        return out.logits[:, -1].to(dtype=torch.float32, copy=True)

    def _lengths(self) -> list[tuple[Any, Any]]:
        """Every cache layer's write position (tensor and host int), to undo the warm-up."""
        saved = []
        for layer in self.cache.layers:
            saved.append((layer.cumulative_length.clone(),
                          getattr(layer, "cumulative_length_int", None)))
        return saved

    def _restore(self, saved: list[tuple[Any, Any]]) -> None:
        for layer, (tensor, count) in zip(self.cache.layers, saved, strict=True):
            layer.cumulative_length.copy_(tensor)
            if count is not None:
                layer.cumulative_length_int = count

    def _buffers(self, ids: torch.Tensor, masks: Any, positions: torch.Tensor) -> Any:
        """Fixed input buffers (what the graph reads); returns the masks in the model's layout."""
        from torch.utils._pytree import tree_flatten, tree_unflatten

        leaves, spec = tree_flatten(masks)
        if not all(isinstance(leaf, torch.Tensor) for leaf in leaves):
            raise RuntimeError(f"attention masks of type {type(masks).__name__} not capturable")
        self.spec = spec
        self.inputs = {"ids": ids.clone(), "positions": positions.clone(),
                       "masks": [leaf.clone() for leaf in leaves]}
        return tree_unflatten(self.inputs["masks"], spec)

    def _capture(self, ids: torch.Tensor, masks: Any, positions: torch.Tensor) -> None:
        if ids.device.type != "cuda":
            raise RuntimeError("CUDA graphs need a CUDA device")
        static_masks = self._buffers(ids, masks, positions)
        saved = self._lengths()
        # Warm up on a side stream (lazy initialisation must not be captured); it writes this
        # step's keys and values, which the first replay writes again identically.
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            self._call(self.inputs["ids"], static_masks, self.inputs["positions"])
        torch.cuda.current_stream().wait_stream(stream)
        self._restore(saved)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self.logits = self._call(self.inputs["ids"], static_masks, self.inputs["positions"])
        self._restore(saved)  # capture ran the host-side updates once more
        self.graph = graph

    def __call__(self, ids: torch.Tensor, width: int, positions: torch.Tensor) -> torch.Tensor:
        from torch.utils._pytree import tree_flatten

        masks = self._masks(width, positions)
        if self.graph is None:
            self._capture(ids, masks, positions)
        leaves, spec = tree_flatten(masks)
        if spec != self.spec or any(leaf.shape != buf.shape
                                    for leaf, buf in zip(leaves, self.inputs["masks"],
                                                         strict=True)):
            raise RuntimeError("the attention-mask layout changed between decoding steps")
        self.inputs["ids"].copy_(ids)
        self.inputs["positions"].copy_(positions)
        for leaf, buf in zip(leaves, self.inputs["masks"], strict=True):
            buf.copy_(leaf)
        self.graph.replay()
        assert self.logits is not None
        return self.logits
