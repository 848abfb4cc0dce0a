"""Forward hooks on decoder layers: read, add, replace, stop early.

Every hook is a context manager that removes itself on exit, also when the body raises, so a
failed run never leaves a model silently edited.  Hook points are the *outputs* of decoder
layers, i.e. the residual stream after layer ``i`` (stable names: ``layer index``).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from difflens.models.arch import Architecture


class StopForward(Exception):
    """Raised inside a hook to end the forward pass once the last needed layer has run."""


def _hidden(output: Any) -> torch.Tensor:
    return output[0] if isinstance(output, tuple) else output


def _with_hidden(output: Any, hidden: torch.Tensor) -> Any:
    return (hidden, *output[1:]) if isinstance(output, tuple) else hidden


@contextmanager
def _forward_hook(module: Any, fn: Any) -> Iterator[None]:
    handle = module.register_forward_hook(fn)
    try:
        yield
    finally:
        handle.remove()


@contextmanager
def capture(
    arch: Architecture, layers: Iterable[int], stop_early: bool = True
) -> Iterator[dict[int, torch.Tensor]]:
    """Record the residual output of ``layers`` during forward passes inside the block.

    Yields a dict ``layer -> (B, T, d)`` tensor (detached), filled by the next forward.  With
    ``stop_early`` the forward pass raises :class:`StopForward` right after the deepest requested
    layer, skipping the remaining layers and the LM head; run it through :func:`run_forward`.
    """
    from contextlib import ExitStack

    wanted = sorted({arch.resolve_layer(layer) for layer in layers})
    store: dict[int, torch.Tensor] = {}
    last = wanted[-1]

    def make_hook(index: int) -> Any:
        def hook(_module: Any, _inputs: Any, output: Any) -> None:
            store[index] = _hidden(output).detach()
            if stop_early and index == last:
                raise StopForward

        return hook

    with ExitStack() as stack:
        for index in wanted:
            stack.enter_context(_forward_hook(arch.layers[index], make_hook(index)))
        yield store


def run_forward(model: Any, **inputs: Any) -> Any:
    """Call ``model(**inputs)``, treating :class:`StopForward` as a normal early end.

    Returns the model output, or ``None`` when a hook stopped the pass early.
    """
    try:
        return model(**inputs, use_cache=False)
    except StopForward:
        return None


@contextmanager
def add_vector(
    arch: Architecture,
    layer: int,
    vector: torch.Tensor,
    positions: torch.Tensor | list[int] | None = None,
) -> Iterator[None]:
    """Add ``vector`` to the residual output of ``layer`` (steering / Patchscope writes).

    Args:
        vector: ``(d,)`` added to every selected position, or ``(B, d)`` one per sequence.
        positions: ``None`` for every position (also the new tokens during generation), a list
            of positions applied to every sequence, or a ``(B,)`` tensor giving one position per
            sequence (e.g. each prompt's last token under padding).  Negative values count from
            the end.  Positions outside a pass's length (later generation steps) are skipped.
    """
    import torch

    index = arch.resolve_layer(layer)

    def hook(_module: Any, _inputs: Any, output: Any) -> Any:
        hidden = _hidden(output)
        vec = vector.to(dtype=hidden.dtype, device=hidden.device)
        if positions is None:
            add = vec if vec.dim() == 1 else vec[:, None, :]
            return _with_hidden(output, hidden + add)
        length = hidden.shape[1]
        if length == 1:  # a cached decoding step: the selected prompt positions are behind us
            return output
        hidden = hidden.clone()
        if isinstance(positions, torch.Tensor):
            rows = torch.arange(hidden.shape[0], device=hidden.device)
            cols = positions.to(hidden.device) % length
            hidden[rows, cols] += vec if vec.dim() == 2 else vec[None, :]
        else:
            for pos in positions:
                if -length <= pos < length:
                    hidden[:, pos] += vec
        return _with_hidden(output, hidden)

    with _forward_hook(arch.layers[index], hook):
        yield


@contextmanager
def replace_projection(
    arch: Architecture, layer: int, direction: torch.Tensor, target: torch.Tensor
) -> Iterator[None]:
    """Replace the component of the residual along ``direction`` by a target value.

    x -> x + (target - x·v̂) v̂ with v̂ = direction/‖direction‖: the projection replacement used
    for ADL's causal test, where ``target`` holds the *base* model's projections.

    Args:
        direction: ``(d,)``.
        target: ``(B, T)`` projections to write, matching the pass's batch and length.
    """
    index = arch.resolve_layer(layer)
    unit = direction / direction.norm()

    def hook(_module: Any, _inputs: Any, output: Any) -> Any:
        hidden = _hidden(output)
        v = unit.to(dtype=hidden.dtype, device=hidden.device)
        current = hidden @ v
        delta = (target.to(hidden.device, hidden.dtype) - current)[..., None] * v
        return _with_hidden(output, hidden + delta)

    with _forward_hook(arch.layers[index], hook):
        yield


@contextmanager
def record_outputs(arch: Architecture, upto: int) -> Iterator[list[Any]]:
    """Record the raw outputs (tensor or tuple, as the layer returns them) of layers 0..``upto``.

    Yields a list filled by the next forward, one entry per layer, for :func:`replay_outputs`.
    """
    from contextlib import ExitStack

    last = arch.resolve_layer(upto)
    store: list[Any] = [None] * (last + 1)

    def make_hook(index: int) -> Any:
        def hook(_module: Any, _inputs: Any, output: Any) -> None:
            store[index] = output

        return hook

    with ExitStack() as stack:
        for index in range(last + 1):
            stack.enter_context(_forward_hook(arch.layers[index], make_hook(index)))
        yield store


def _tile(value: Any, copies: int) -> Any:
    import torch

    if copies == 1:
        return value
    if isinstance(value, torch.Tensor):
        return value.repeat(copies, *([1] * (value.dim() - 1)))
    if isinstance(value, tuple):
        return tuple(_tile(v, copies) for v in value)
    return value


@contextmanager
def replay_outputs(arch: Architecture, outputs: list[Any], copies: int = 1) -> Iterator[None]:
    """Skip layers 0..len(outputs)−1: each returns its recorded output instead of computing.

    Exact whenever the pass sees the same tokens as the recorded one below the first edited
    layer (an edit hook on a replayed layer still fires on the replayed output).  ``copies``
    tiles the recorded batch for passes that stack ``copies`` copies of it (copy-major).  Used
    where many passes differ only above some layer (ADL's causal test): the shared prefix is
    computed once.
    """
    layers = [arch.layers[i] for i in range(len(outputs))]
    tiled = [_tile(out, copies) for out in outputs]
    for layer, out in zip(layers, tiled, strict=True):
        # An instance attribute shadows the class's forward; nn.Module.__call__ still runs
        # hooks around it.
        layer.forward = lambda *_args, _out=out, **_kwargs: _out
    try:
        yield
    finally:
        for layer in layers:
            del layer.forward
