"""The weight-space lens runner: plan → diff → readouts → summary, each stage reused when
already finished in the run directory.

Everything that can be wrong with the inputs (sources, adapter files, module names, shapes) is
found by the plan, from file headers, before the run directory is created: a bad pair leaves
nothing half-written.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

from difflens.io.artifacts import (
    RunDir,
    config_hash,
    read_json,
    read_tensors,
    timed_stage,
    write_json,
    write_tensors,
)
from difflens.methods.weights.checkpoint import Checkpoint, load_base, readout_head
from difflens.methods.weights.config import WeightsConfig
from difflens.methods.weights.core import ModuleStats, module_stats, residual_vectors
from difflens.methods.weights.diff import Adapter, Plan, diff_jobs, plan_full, plan_lora
from difflens.methods.weights.modules import kind_order
from difflens.methods.weights.readout import read_module, shared_ids
from difflens.methods.weights.result import (
    MODULES_FILE,
    READOUTS_FILE,
    VECTORS_FILE,
    WeightsResult,
)
from difflens.methods.weights.sources import LORA, resolve_pair

__all__ = ["WeightsConfig", "default_run_dir", "run_weights"]

TOP_ROWS = 30  # module rows copied into summary.json (modules.json has all)
# Singular vectors with σ below this fraction of σ₁ are numerical noise of a low-rank ΔW.
_SIGMA_FLOOR = 1e-6


def default_run_dir(config: WeightsConfig) -> Path:
    return Path("runs") / f"weights-{config_hash(config.to_dict())}"


def _heatmap(rows: list[ModuleStats], rank_by: str) -> dict[str, Any]:
    """Layers × module kinds of the ranking metric (None where a kind has no module)."""
    layered = [r for r in rows if r.layer is not None]
    layers = sorted({r.layer for r in layered})
    kinds = sorted({r.kind for r in layered}, key=kind_order)
    values: list[list[float | None]] = [[None] * len(kinds) for _ in layers]
    for r in layered:
        values[layers.index(r.layer)][kinds.index(r.kind)] = r.score(rank_by)
    return {"metric": rank_by, "layers": layers, "kinds": kinds, "values": values}


def _diff(plan: Plan, base: Any, other: Any, config: WeightsConfig, progress: bool
          ) -> tuple[list[ModuleStats], dict[str, Any]]:
    from tqdm.auto import tqdm

    rows, vectors = [], {}
    keep = max(config.top_singular, config.n_vectors)
    jobs = diff_jobs(plan, base, other, config.device, keep)
    for job, svd, base_norm in tqdm(jobs, total=len(plan.jobs), desc="ΔW per module",
                                    disable=not progress):
        row = module_stats(job.name, job.layer, job.kind, job.role, svd, base_norm,
                           config.top_singular, job.rank)
        rows.append(row)
        vec = residual_vectors(svd, job.role, config.n_vectors)
        if vec is not None and row.changed:
            n = int((svd.S[: vec.shape[0]] > _SIGMA_FLOOR * float(svd.S[0])).sum())
            vectors[job.name] = vec[:n].cpu()
    return rows, vectors


def _ft_tokenizer(sources: Any) -> Any:
    """The finetune's own tokenizer (full checkpoints that ship one), else None."""
    if sources.ft_dir is None:
        return None
    path = Path(sources.ft_dir)
    if not any((path / f).exists() for f in ("tokenizer.json", "tokenizer_config.json")):
        return None
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(path))
    except (OSError, ValueError):
        return None


def _readouts(ranked: list[ModuleStats], vectors: dict[str, Any], base: Any, sources: Any,
              config: WeightsConfig, trust_remote_code: bool) -> dict[str, Any]:
    chosen = [r for r in ranked if r.changed and r.name in vectors and len(vectors[r.name])]
    chosen = chosen[: config.readout_modules]
    if not chosen:
        return {"rows": [], "notes": []}
    arch, tokenizer = readout_head(base, config.device, trust_remote_code)
    vocab = int(next(arch.unembed.parameters()).shape[0])
    allowed, note = shared_ids(tokenizer, _ft_tokenizer(sources), vocab)
    rows = []
    for r in chosen:
        vec = vectors[r.name]
        rows.append({"module": r.name, "layer": r.layer, "kind": r.kind, "role": r.role,
                     "score": r.score(config.rank_by),
                     "vectors": read_module(arch, tokenizer, vec, r.sigma[: len(vec)],
                                            config.top_tokens, allowed)})
    return {"rows": rows, "notes": [note] if note else []}


def run_weights(config: WeightsConfig, out: Path | None = None, progress: bool = True,
                trust_remote_code: bool = False) -> dict[str, Any]:
    """Run (or resume) the weight-space lens; returns :class:`WeightsResult` as a dict."""
    config.validate()
    sources = resolve_pair(config.base, config.finetuned)
    base = load_base(sources.base_location, sources.base_kind, f"base {sources.base_id}",
                     trust_remote_code)
    if sources.method == LORA:
        other: Any = Adapter(Path(sources.adapter_dir))
        plan = plan_lora(other, base)
    else:
        other = Checkpoint(Path(sources.ft_dir), f"finetuned {sources.ft_id}")
        plan = plan_full(base, other)
    run = RunDir(out or default_run_dir(config), config.to_dict(), kind="weights")
    timings: dict[str, float] = {}

    timed = partial(timed_stage, timings)  # records each computed stage's seconds

    def save_diff(value: tuple[list[ModuleStats], dict[str, Any]]) -> None:
        rows, vectors = value
        write_tensors(run.path / VECTORS_FILE, vectors, {"modules": str(len(vectors))})
        write_json(run.path / MODULES_FILE, [r.to_dict() for r in rows])

    def load_diff() -> tuple[list[ModuleStats], dict[str, Any]]:
        rows = [ModuleStats.from_dict(r) for r in read_json(run.path / MODULES_FILE)]
        return rows, read_tensors(run.path / VECTORS_FILE)[0]

    rows, vectors = run.stage("diff", timed("diff", lambda: _diff(plan, base, other, config,
                                                                  progress)),
                              save_diff, load_diff)
    ranked = sorted(rows, key=lambda r: -r.score(config.rank_by))
    readouts = run.stage(
        "readouts",
        timed("readouts", lambda: _readouts(ranked, vectors, base, sources, config,
                                            trust_remote_code)),
        lambda v: write_json(run.path / READOUTS_FILE, v),
        lambda: read_json(run.path / READOUTS_FILE))
    if any(r.layer is None for r in rows):
        plan.notes.append("some adapted modules lie outside the layer stack; they are ranked "
                          "but not in the heat map")
    changed = [r for r in rows if r.changed]
    result = WeightsResult(
        run_dir=str(run.path), base=sources.base_id, finetuned=sources.ft_id,
        method=plan.method, rank_by=config.rank_by, hidden=plan.hidden, n_modules=len(rows),
        n_changed=len(changed), no_difference=not changed,
        max_norm=max((r.norm for r in rows), default=0.0),
        top_modules=[{**r.to_dict(), "score": r.score(config.rank_by)}
                     for r in ranked[:TOP_ROWS]],
        heatmap=_heatmap(rows, config.rank_by), readouts=readouts["rows"],
        notes=[*plan.notes, *readouts["notes"]], seconds=timings)
    result.save(run.path)
    return result.to_dict()
