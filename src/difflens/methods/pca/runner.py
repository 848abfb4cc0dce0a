"""The PCA runner: stages over a run directory, each reused when already finished.

layer → covariance (pass 1) → pca → norms → readout → patchscope → contexts (pass 2) →
steering → summary.  The report is rendered by the layer above (:func:`difflens.api.run_pca`).

Under torchrun (:mod:`difflens.distributed`) the four passes over the corpus (layer choice,
covariance, norms, contexts) are sharded by rows and merged (covariances and top-context stores
on rank 0, the layer choice's moments on every rank); rank 0 alone decomposes, reads out,
steers and writes, the other ranks exit 0 after the last pass.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

import torch

from difflens.data.corpus import chat_prompts, load_texts
from difflens.errors import DifflensError
from difflens.io.artifacts import RunDir, config_hash, read_json, timed_stage, write_json
from difflens.methods.pca.config import PCAConfig, check_components, resolve_defaults
from difflens.methods.pca.core import NO_DIFFERENCE_RTOL, PCAFit, cosines, fit, valid_positions
from difflens.methods.pca.passes import accumulate, tokenize, top_contexts
from difflens.methods.pca.result import (
    LAYER_FILE,
    NORMS_FILE,
    PATCHSCOPE_FILE,
    PCA_FILE,
    READOUT_FILE,
    STEERING_FILE,
    SUMMARY_TOKENS,
    PCAResult,
    int_keys,
    str_keys,
)
from difflens.models.device import is_gpu
from difflens.models.loading import LoadOptions
from difflens.models.pair import FT, ModelPair

__all__ = ["PCAConfig", "PCAResult", "default_run_dir", "run_pca"]


def default_run_dir(config: PCAConfig) -> Path:
    return Path("runs") / f"pca-{config_hash(config.identity())}"


def make_grader(pair: ModelPair, config: PCAConfig) -> Any:
    """LLM grader when an endpoint is configured (probed now: fails fast), else offline (base
    perplexity), as ADL's runner does."""
    from difflens.graders import make_grader as factory
    from difflens.llm import llm_config_from_fields

    llm = llm_config_from_fields(config.to_dict())
    if llm is not None:
        return factory(llm, check_reachable=True)
    from difflens.models.perplexity import base_perplexity

    return factory(None, perplexity=base_perplexity(pair))


def choose_layers(pair: ModelPair, config: PCAConfig, texts: list[str], batch_size: int,
                  progress: bool) -> dict[str, Any]:
    """``--layers`` resolved, else ADL's readout layer from a first-k-token pass."""
    if config.layers:
        return {"layers": pair.resolve_layers(list(config.layers)), "choice": None}
    from difflens.collect import choose_readout_layer

    choice = choose_readout_layer(pair, texts, k=config.k, batch_size=max(batch_size, 64),
                                  progress=progress)
    return {"layers": [choice.layer], "choice": choice.to_dict()}


def layer_summary(fitted: PCAFit, adl_mean: torch.Tensor, rms_ratio: float) -> dict[str, Any]:
    """The JSON record of one layer's decomposition (lists per component)."""
    explained = fitted.explained
    return {
        "count": fitted.count,
        "eigenvalues": [float(v) for v in fitted.eigenvalues],
        "explained": [round(float(v), 6) for v in explained],
        "cumulative": [round(float(v), 6) for v in explained.cumsum(0)],
        "total_variance": fitted.total_variance,
        "mean_norm": float(fitted.mean.norm()),
        "mean_share": round(fitted.mean_share, 6),
        "adl_norm": float(adl_mean.norm()),
        "cos_adl": [round(float(v), 6) for v in cosines(fitted.components, adl_mean)],
        "cos_mean": [round(float(v), 6) for v in cosines(fitted.components, fitted.mean)],
        "signs": [int(s) for s in fitted.signs],
        "rms_ratio": rms_ratio,
        "no_difference": rms_ratio < NO_DIFFERENCE_RTOL,
    }


def run_pca(config: PCAConfig, out: Path | None = None, pair: ModelPair | None = None,
            progress: bool = True) -> dict[str, Any]:
    """Run (or resume) PCA of activation differences; returns :class:`PCAResult` as a dict."""
    config.validate()  # ranges, choices, paths: before any model loads
    if pair is None:
        pair = ModelPair.load(config.base, config.finetuned,
                              LoadOptions(dtype=config.dtype, device=config.device))
    d = pair.arch(FT).hidden_size
    check_components(config, d)
    if config.layers:
        pair.resolve_layers(list(config.layers))  # a bad --layers fails before any work
    gpu = is_gpu(pair.device)
    sizes = resolve_defaults(config, gpu)
    texts = load_texts(config.corpus, limit=sizes.n_texts, tokenizer=pair.tokenizer)
    ids, attention = tokenize(pair.tokenizer, texts, config.max_tokens)
    n_valid = int(valid_positions(attention).sum())
    if n_valid == 0:
        raise DifflensError(
            "no valid positions: every text of the corpus is a single token (BOS) once "
            "tokenised, and BOS is never counted; give --corpus longer texts")
    from difflens import distributed as dd
    from difflens.collect import collect_norms

    batch = sizes.batch_size
    lo, hi = dd.shard_range(ids.shape[0])  # this rank's rows (all of them when alone)

    def covariance() -> Any:
        part = dd.run_shard("the covariance pass", lambda: accumulate(
            pair, ids[lo:hi], attention[lo:hi], layers, config.k, batch,
            progress and dd.is_main()))
        return dd.merged(part, to_main=True)

    def norms_pass() -> dict[str, Any]:
        return {side: str_keys(per) for side, per in collect_norms(
            pair, texts, layers, progress=progress and dd.is_main()).items()}

    def contexts(top: dict[int, torch.Tensor]) -> Any:
        part = dd.run_shard("the top-context pass", lambda: top_contexts(
            pair, ids[lo:hi], attention[lo:hi], top, config.contexts, config.window, batch,
            progress and dd.is_main(), offset=lo))
        parts = dd.gather_objects(part, to_main=True)
        if parts is None:
            return None
        for other in parts[1:]:  # the stores rank by (value, text, position): order-free
            for la, store in parts[0].items():
                store.merge(other[la])
        return parts[0]

    if not dd.is_main():  # torchrun rank > 0: its shares of the passes, nothing written
        plan = dd.from_main(None)
        if not plan["layer"]:
            choose_layers(pair, config, texts, batch, False)
        layers = dd.from_main(None)
        if not plan["covariance"]:
            covariance()
        later = dd.from_main(None)
        if later["norms"]:
            norms_pass()
        if later["contexts"] is not None:
            contexts(later["contexts"])
        raise dd.WorkerDone()
    run = RunDir(out or default_run_dir(config), config.identity(), kind="pca")
    timings: dict[str, float] = dict(run.finished().get("_timings", {}).get("seconds", {}))
    notes: list[str] = []

    timed = partial(timed_stage, timings)  # records each computed stage's seconds

    def json_stage(name: str, file: str, compute: Any) -> Any:
        path = run.path / file
        return run.stage(name, timed(name, compute), lambda v: write_json(path, v),
                         lambda: read_json(path))

    # Under torchrun the other ranks run the model passes with rank 0 (layer, covariance,
    # norms, contexts: every pass over the corpus, sharded by rows) and leave; rank 0 says which
    # of them are still to do.  The contexts pass therefore runs before the read-outs, which
    # only rank 0 does (their order does not change any result).
    dd.from_main({"layer": bool(config.layers) or run.is_done("layer"),
                  "covariance": run.is_done("covariance")})
    chosen = json_stage("layer", LAYER_FILE,
                        lambda: choose_layers(pair, config, texts, batch, progress))
    layers = [int(x) for x in chosen["layers"]]
    dd.from_main(layers)
    stats = run.stage("covariance", timed("covariance", covariance),
                      lambda s: PCAResult.save_stats(run.path, s),
                      lambda: PCAResult.load_stats(run.path))

    def decompose() -> dict[str, Any]:
        fits = {la: fit(stats.cov[la], config.components) for la in layers}
        PCAResult.save_components(run.path, {la: f.components for la, f in fits.items()},
                                  {la: f.eigenvalues for la, f in fits.items()})
        return str_keys({la: layer_summary(fits[la], stats.adl_mean(la), stats.rms_ratio(la))
                         for la in layers})

    pca = int_keys(json_stage("pca", PCA_FILE, decompose))
    components = PCAResult.load_components(run.path)
    no_difference = all(pca[la]["no_difference"] for la in layers)
    top = {la: components[la][: config.readout] for la in layers}
    readouts: dict[int, list[dict[str, Any]]] = {}
    patch = steering = None
    steer_layer = layers[0]
    grader_cache: list[Any] = []

    def grader() -> Any:
        if not grader_cache:
            grader_cache.append(make_grader(pair, config))
        return grader_cache[0]

    wants_norms = not no_difference and ("patchscope" not in config.skip or (
        "steering" not in config.skip and config.steer > 0))
    wants_contexts = not no_difference and "contexts" not in config.skip
    dd.from_main({"norms": wants_norms and not run.is_done("norms"),
                  "contexts": top if wants_contexts and not run.is_done("contexts") else None})
    norms: dict[str, Any] = {}
    if wants_norms:
        norms = json_stage("norms", NORMS_FILE, norms_pass)
    if wants_contexts:
        run.stage("contexts", timed("contexts", lambda: contexts(top)),
                  lambda s: PCAResult.save_contexts(run.path, s, pair.tokenizer), lambda: None)
    dd.end_collectives()  # the read-outs and steering are rank 0's alone
    if no_difference:
        notes.append(f"No difference between the models at layer(s) {layers} (rms δ / rms h_ft "
                     f"< {NO_DIFFERENCE_RTOL:g}): the covariance is zero; nothing is read out.")
    else:
        from difflens.methods.pca.readouts import (
            lens_readouts,
            patchscope_readouts,
            steering_runs,
        )

        nu_ft = {int(k): float(v) for k, v in norms.get("ft", {}).items()}
        readouts = int_keys(json_stage("readout", READOUT_FILE, lambda: str_keys(
            {la: lens_readouts(pair, top[la], config.top) for la in layers})))
        if "patchscope" not in config.skip:
            patch = int_keys(json_stage("patchscope", PATCHSCOPE_FILE, lambda: str_keys(
                {la: patchscope_readouts(pair, top[la], la, nu_ft[la], grader(), config.top)
                 for la in layers})))
        if "steering" not in config.skip and config.steer > 0:
            steering = json_stage("steering", STEERING_FILE, lambda: steering_runs(
                pair, components[steer_layer][: config.steer], steer_layer, nu_ft[steer_layer],
                grader(), chat_prompts(), _steering_config(config, sizes, gpu)))
    run.mark_done("_timings", {"seconds": timings})
    result = PCAResult(
        run_dir=str(run.path), base=pair.base_id, finetuned=pair.ft_id, layers=layers,
        n_texts=int(ids.shape[0]), n_positions=stats.cov[layers[0]].count,
        max_tokens=config.max_tokens, d=d, n_components=config.components,
        readout_components=config.readout, no_difference=no_difference, pca=pca,
        readouts={la: _trim_readouts(rows) for la, rows in readouts.items()},
        layer_choice=chosen.get("choice"), patchscope=_chosen(patch),
        steering=_steering_summary(steering), steering_layer=steer_layer if steering else None,
        notes=notes, seconds=timings)
    result.save(run.path)
    return result.to_dict()


def _steering_config(config: PCAConfig, sizes: PCAConfig, gpu: bool) -> Any:
    """ADL's steering settings (see methods/adl/runner.py for the measurements behind them)."""
    from difflens.models.steering import SteeringConfig

    steering = SteeringConfig(final_prompts=config.final_prompts, search_prompts=8,
                              tolerance=0.05 if gpu else 0.125, lookahead=3 if gpu else 2)
    return steering.replace(sampling=steering.sampling.replace(
        max_new_tokens=sizes.max_new_tokens, seed=config.seed))


def _trim_readouts(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"component": r["component"],
             **{sign: {"tokens": r[sign]["tokens"][:SUMMARY_TOKENS],
                       "probs": r[sign]["probs"][:SUMMARY_TOKENS]}
                for sign in ("positive", "negative")}} for r in rows]


def _chosen(patch: dict[int, list[dict[str, Any]]] | None
            ) -> dict[int, list[dict[str, Any]]] | None:
    if patch is None:
        return None
    return {la: [{"component": r["component"],
                  **{sign: r[sign]["chosen"] for sign in ("positive", "negative")}}
                 for r in rows] for la, rows in patch.items()}


def _steering_summary(runs: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
    if runs is None:
        return None
    out = []
    for r in runs:
        samples = r.get("samples") or {}
        out.append({"component": r["component"], "sign": r["sign"], "layer": r["layer"],
                    "found": r["found"], "alpha": r["alpha"], "reason": r.get("reason"),
                    "confirmed": samples.get("confirmed"),
                    "prompts": samples.get("prompts", []), "steered": samples.get("steered", []),
                    "unsteered": samples.get("unsteered", [])})
    return out
