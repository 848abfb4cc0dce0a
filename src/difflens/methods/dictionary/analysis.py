"""Analysis of a trained dictionary over the validation split of its activation cache.

One streaming pass (:class:`LatentScan`) gives, per latent, how often and how strongly it fires
and where its top activations are (as ``(shard, row)`` of the cache), the reconstruction
metrics, and closed-form Latent Scaling β/ν for the finetune-only latents and an equal number of
random shared latents (the control).  From the decoder alone: Δ_norm, decoder cosine, tags.
Readouts then need only the chosen latents: text windows rebuilt from the cache's token ids
(:func:`latent_contexts`), the logit lens of each ft decoder direction (:func:`logit_lens`) and
greedy generations of the finetuned model steered along it (:func:`steer`).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
from torch import Tensor

from difflens.errors import DifflensError
from difflens.methods.dictionary.config import AnalysisConfig
from difflens.methods.dictionary.dictionary import FT, SparseDictionary
from difflens.methods.dictionary.latent_scaling import LatentScaling
from difflens.methods.dictionary.metrics import (
    LatentTag,
    decoder_cosine,
    delta_norm,
    delta_norm_histogram,
    tag_latents,
)

if TYPE_CHECKING:
    from difflens.methods.dictionary.cache import ActivationCache, IndexedChunk
    from difflens.models.pair import ModelPair

TAG_NAMES = {int(t): t.name.lower() for t in LatentTag}
LATENTS_FILE, METRICS_FILE, CONTEXTS_FILE = "latents.json", "metrics.json", "contexts.json"
LENS_FILE, STEERING_FILE, SCAN_FILE = "lens.json", "steering.json", "scan.safetensors"


class TopRows(NamedTuple):
    """Where each latent fired most: ``(F, N)`` each, best first (value 0 = empty slot)."""

    val: Tensor  # float32 activation (normalised units)
    shard: Tensor  # int64 shard index
    row: Tensor  # int64 row within the shard


def _is_crosscoder(dictionary: SparseDictionary) -> bool:
    return dictionary.n_models == 2


def scaling_groups(dictionary: SparseDictionary, config: AnalysisConfig) -> dict[str, Tensor]:
    """Latents that get Latent Scaling, chosen from the decoder before the pass.

    ``ft_only``: tagged finetune-only (lowest Δ_norm first, at most ``max_scaled``);
    ``ft_leaning``: when fewer than ``min_scaled`` are ft-only, the next-lowest Δ_norm latents
    not dead in training, so that a weakly trained crosscoder still gets a comparison;
    ``control``: as many random shared, non-dead latents (seeded).
    """
    if not _is_crosscoder(dictionary):
        return {}
    delta = delta_norm(dictionary.W_dec).cpu()
    tags, alive = tag_latents(delta), ~dictionary.dead_mask().cpu()
    order = torch.argsort(delta, stable=True)
    ft_only = order[tags[order] == int(LatentTag.FT_ONLY)][: config.max_scaled]
    rest = order[(tags[order] != int(LatentTag.FT_ONLY)) & alive[order]]
    leaning = rest[: max(0, config.min_scaled - ft_only.numel())]
    shared = ((tags == int(LatentTag.SHARED)) & alive).nonzero().squeeze(1)
    shared = shared[~torch.isin(shared, leaning)]
    gen = torch.Generator().manual_seed(config.seed)
    n_control = min(ft_only.numel() + leaning.numel(), shared.numel())
    control = shared[torch.randperm(shared.numel(), generator=gen)[:n_control]]
    return {"ft_only": ft_only, "ft_leaning": leaning, "control": control}


class LatentScan:
    """One pass over ``IndexedChunk``s: metrics, per-latent statistics, top rows, β/ν."""

    def __init__(self, dictionary: SparseDictionary, top_n: int, scaled: Tensor | None) -> None:
        self.dictionary = dictionary
        m, d, width = dictionary.n_models, dictionary.config.d_in, dictionary.config.width
        self.top_n = top_n
        self.err = torch.zeros(m, dtype=torch.float64)  # Σ‖a − â‖²
        self.zero_err = torch.zeros(m, dtype=torch.float64)  # Σ‖a − b_dec‖²: no latent active
        self.sum = torch.zeros(m, d, dtype=torch.float64)
        self.sq = torch.zeros(m, dtype=torch.float64)
        self.n = 0
        self.count = torch.zeros(width, dtype=torch.int64)  # samples on which j fired
        self.act_sum = torch.zeros(width, dtype=torch.float64)
        self.top_val = torch.zeros(width, top_n)  # 0 = empty slot (activations are > 0)
        self.top_shard = torch.full((width, top_n), -1, dtype=torch.int64)
        self.top_row = torch.full((width, top_n), -1, dtype=torch.int64)
        self.scaling = (LatentScaling(dictionary, scaled, raw_units=True)
                        if scaled is not None and scaled.numel() else None)
        with torch.no_grad():  # the reconstruction when no latent fires: the decoder bias
            zeros = torch.zeros(1, width, device=dictionary.W_dec.device)
            self.zero = dictionary.decode(zeros).double().cpu().reshape(1, m, d)

    @torch.no_grad()
    def update(self, chunk: IndexedChunk) -> None:
        """Add a chunk of raw paired rows ``(B, 2, d)`` with their cache indices."""
        model = self.dictionary
        x = chunk.x.to(model.W_dec.device)
        was_training = model.training
        model.eval()
        try:
            out = model(x)
        finally:
            model.train(was_training)
        xm = model.prepare_input(x).double().cpu()  # (B, M, d)
        recon = out.reconstruction.double().cpu().reshape(xm.shape)
        self.err += (xm - recon).pow(2).sum(dim=(0, 2))
        self.zero_err += (xm - self.zero).pow(2).sum(dim=(0, 2))
        self.sum += xm.sum(0)
        self.sq += xm.pow(2).sum(dim=(0, 2))
        self.n += x.shape[0]
        latents = out.latents.float().cpu()  # (B, F)
        self.count += (latents > 0).sum(0)
        self.act_sum += latents.sum(0).double()
        k = min(self.top_n, latents.shape[0])
        vals, idx = latents.T.topk(k, dim=1)  # (F, k): this chunk's best rows per latent
        val = torch.cat([self.top_val, vals], 1)
        shard = torch.cat([self.top_shard, chunk.shard[idx]], 1)
        row = torch.cat([self.top_row, chunk.row[idx]], 1)
        best = val.topk(self.top_n, dim=1).indices
        self.top_val, self.top_shard, self.top_row = (
            val.gather(1, best), shard.gather(1, best), row.gather(1, best))
        if self.scaling is not None:
            self.scaling.update(x)

    def tops(self) -> TopRows:
        return TopRows(self.top_val, self.top_shard, self.top_row)

    def metrics(self) -> dict[str, Any]:
        """FVE per model (and of the zero-latent baseline), L0, dead fraction on this data."""
        var = self.sq - self.sum.pow(2).sum(-1) / max(self.n, 1)
        names = ["base", "ft"] if _is_crosscoder(self.dictionary) else ["diff"]
        fired = self.count > 0
        return {
            "n_rows": self.n,
            "fve": dict(zip(names, (1 - self.err / var).tolist(), strict=True)),
            "fve_zero_latents": dict(zip(names, (1 - self.zero_err / var).tolist(), strict=True)),
            "l0": float(self.count.sum()) / max(self.n, 1),
            "dead_fraction": float((~fired).float().mean()),
            "dead_fraction_training": float(self.dictionary.dead_mask().float().mean()),
        }


def scan(dictionary: SparseDictionary, chunks: Iterable[IndexedChunk], top_n: int,
         scaled: Tensor | None) -> LatentScan:
    """Run :class:`LatentScan` over ``chunks``."""
    acc = LatentScan(dictionary, top_n, scaled)
    for chunk in chunks:
        acc.update(chunk)
    return acc


def _num(value: float) -> float | None:
    """JSON-safe float with 6 significant digits (NaN / inf -> None)."""
    value = float(value)
    return float(f"{value:.6g}") if math.isfinite(value) else None


def latent_table(dictionary: SparseDictionary, acc: LatentScan, groups: dict[str, Tensor]
                 ) -> list[dict[str, Any]]:
    """One record per latent: Δ_norm, cosine, tag, decoder norms, frequency, activation,
    β per model and target and ν (Latent Scaling latents only), group."""
    width = dictionary.config.width
    norms = dictionary.decoder_norms().cpu()  # (F, M)
    freq = acc.count.double() / max(acc.n, 1)
    mean_act = acc.act_sum / acc.count.clamp_min(1)
    cols: dict[str, list[Any]] = {
        "latent": list(range(width)), "freq": freq.tolist(), "mean_act": mean_act.tolist(),
        "max_act": acc.top_val[:, 0].tolist(),
    }
    if _is_crosscoder(dictionary):
        delta = delta_norm(dictionary.W_dec).cpu()
        cols.update(delta_norm=delta.tolist(),
                    cosine=decoder_cosine(dictionary.W_dec).cpu().tolist(),
                    tag=[TAG_NAMES[int(t)] for t in tag_latents(delta)],
                    norm_base=norms[:, 0].tolist(), norm_ft=norms[:, FT].tolist())
    else:
        cols["norm"] = norms[:, 0].tolist()
    rows = [{k: (v[j] if isinstance(v[j], (int, str)) else _num(v[j])) for k, v in cols.items()}
            for j in range(width)]
    for name, idx in groups.items():
        for j in idx.tolist():
            rows[j]["group"] = name
    if acc.scaling is not None:
        res = acc.scaling.result()
        for i, j in enumerate(res.latents.tolist()):
            for target in ("error", "reconstruction", "activation"):
                beta = getattr(res, f"beta_{target}")[:, i]
                rows[j][f"beta_{target}_base"] = _num(beta[0])
                rows[j][f"beta_{target}_ft"] = _num(beta[FT])
            rows[j]["nu_error"] = _num(res.nu_error[i])
            rows[j]["nu_reconstruction"] = _num(res.nu_reconstruction[i])
    return rows


def summary_metrics(dictionary: SparseDictionary, acc: LatentScan, rows: list[dict[str, Any]]
                    ) -> dict[str, Any]:
    """``metrics.json``: reconstruction metrics, tag counts, Δ_norm histogram, ν medians."""
    out = {"kind": dictionary.kind, "width": dictionary.config.width, **acc.metrics()}
    if not _is_crosscoder(dictionary):
        return out
    delta = delta_norm(dictionary.W_dec).cpu()
    counts, edges = delta_norm_histogram(delta, bins=20)
    out["delta_norm_histogram"] = {"counts": [int(c) for c in counts.tolist()],
                                   "edges": [round(e, 4) for e in edges.tolist()]}
    out["tags"] = {name: sum(r["tag"] == name for r in rows) for name in TAG_NAMES.values()}
    scaling = {}
    for group in ("ft_only", "ft_leaning", "control"):
        members = [r for r in rows if r.get("group") == group]
        summary: dict[str, Any] = {"n": len(members)}
        for nu in ("nu_error", "nu_reconstruction"):
            values = torch.tensor([r[nu] for r in members if r.get(nu) is not None])
            summary[f"median_{nu}"] = _num(values.median()) if values.numel() else None
        scaling[group] = summary
    out["latent_scaling"] = scaling
    return out


def shown_latents(rows: list[dict[str, Any]], config: AnalysisConfig) -> list[int]:
    """Latents read out in detail: Latent-Scaling groups for a crosscoder (ft-only first, then
    ft-leaning, then controls), else the live latents of largest activation mass."""
    live = [r for r in rows if r["freq"]]
    if any("group" in r for r in rows):
        chosen: list[int] = []
        for group in ("ft_only", "ft_leaning", "control"):
            members = [r for r in live if r.get("group") == group]
            members.sort(key=lambda r: r.get("delta_norm") or 0.0)
            chosen += [r["latent"] for r in members[: config.max_latents]]
        return chosen
    mass = sorted(live, key=lambda r: -(r["freq"] * (r["mean_act"] or 0) * (r["norm"] or 0)))
    return [r["latent"] for r in mass[: config.max_latents]]


@torch.no_grad()
def latent_contexts(cache: ActivationCache, layer: int, dictionary: SparseDictionary,
                    tops: TopRows, latents: list[int], window: tuple[int, int],
                    tokenizer: Any = None) -> dict[str, list[dict[str, Any]]]:
    """Top contexts of ``latents``: the token window around each top ``(shard, row)``, with the
    latent's activation on every cached token of the window (rebuilt from the cache)."""
    wanted: dict[int, list[tuple[int, int, float]]] = defaultdict(list)
    for j in latents:
        for val, shard, row in zip(tops.val[j].tolist(), tops.shard[j].tolist(),
                                   tops.row[j].tolist(), strict=True):
            if val > 0:
                wanted[shard].append((j, row, val))
    pieces: dict[int, str] = {}
    out: dict[str, list[dict[str, Any]]] = {str(j): [] for j in latents}
    was_training = dictionary.training
    dictionary.eval()
    try:
        for shard, items in sorted(wanted.items()):
            data = cache.read_shard(shard, [layer])
            by_seq = {s.seq: s for s in cache.sequences(shard)}
            for j, row, val in items:
                s = by_seq[int(data.seq[row])]
                pos = int(data.pos[row])
                lo, hi = max(0, pos - window[0]), min(len(s.tokens), pos + window[1] + 1)
                cached = range(max(lo, s.first_position), hi)
                rows = [s.start + q - s.first_position for q in cached]
                acts = [0.0] * (hi - lo)
                if rows:
                    x = data.acts[layer][rows].to(dictionary.W_dec.device, torch.float32)
                    lat = dictionary(x).latents[:, j]
                    for q, a in zip(cached, lat.tolist(), strict=True):
                        acts[q - lo] = _num(a)
                ids = s.tokens[lo:hi]
                ctx = {"shard": shard, "row": row, "text": s.text, "position": pos,
                       "activation": _num(val), "focus": pos - lo, "token_ids": ids,
                       "acts": acts}
                if tokenizer is not None:
                    for t in ids:
                        if t not in pieces:
                            pieces[t] = tokenizer.decode([t])
                    ctx["tokens"] = [pieces[t] for t in ids]
                out[str(j)].append(ctx)
    finally:
        dictionary.train(was_training)
    for contexts in out.values():
        contexts.sort(key=lambda c: -(c["activation"] or 0))
    return out


def decoder_directions(dictionary: SparseDictionary, latents: list[int]) -> Tensor:
    """``(J, d)`` decoder vectors in raw activation units: the ft decoder of a crosscoder, the
    (only) decoder of a diff-SAE."""
    m = FT if _is_crosscoder(dictionary) else 0
    w = dictionary.W_dec.detach()[latents, m].float().cpu()
    return w / dictionary.normalizer.scale[m].detach().float().cpu()


def analyze(dictionary_dir: str | Path, out: str | Path | None = None, *,
            cache: str | Path | None = None, layer: int | float | None = None,
            pair: ModelPair | None = None, config: AnalysisConfig | None = None,
            device: str = "cpu", progress: bool = True) -> dict[str, Any]:
    """Analyse the dictionary trained into ``dictionary_dir`` (or a saved dictionary directory)
    on the validation split of its cache; artifacts go to ``out`` (default
    ``dictionary_dir/analysis``), stage by stage, each reused when already finished.

    ``cache``/``layer`` default to the ones recorded at training.  Without ``pair`` the readouts
    that run a model (logit lens, steering) are left for a later call, and contexts carry token
    ids only.  ``device``: where the dictionary runs.  Returns the metrics (``metrics.json``).
    """
    from tqdm.auto import tqdm

    from difflens.io.artifacts import (
        RunDir,
        read_json,
        read_optional_json,
        read_tensors,
        write_json,
        write_tensors,
    )
    from difflens.methods.dictionary.cache import ActivationCache, sha256_hex
    from difflens.methods.dictionary.crosscoder import load_dictionary
    from difflens.methods.dictionary.runner import TRAINING_FILE, logit_lens, steer

    config = config or AnalysisConfig()
    source = Path(dictionary_dir)
    training = read_optional_json(source / TRAINING_FILE) or {}
    weights = source / "dictionary" if (source / "dictionary").is_dir() else source
    dictionary = load_dictionary(weights, device)
    if cache is None and "cache" not in training:
        raise DifflensError(f"{source} records no activation cache; pass --cache DIR")
    acts = ActivationCache(cache if cache is not None else training["cache"])
    layer = acts.resolve_layer(layer if layer is not None else training.get("layer"))
    if dictionary.config.d_in != acts.d_model:
        raise DifflensError(f"the dictionary in {weights} reads d={dictionary.config.d_in} but "
                            f"the cache {acts.path} holds d={acts.d_model}; use the cache it was "
                            "trained on")
    split = {k: training.get("read", {}).get(k, v) for k, v in
             (("val_fraction", 0.1), ("split_seed", 0))}
    run = RunDir(out if out is not None else source / "analysis", {
        "dictionary": sha256_hex((weights / "dictionary.safetensors").read_bytes()),
        "cache": str(acts.path.resolve()), "layer": layer, **split, **config.identity(),
    }, kind="dictionary")
    path = run.path
    if not run.is_done("scan"):
        groups = scaling_groups(dictionary, config)
        scaled = torch.cat(list(groups.values())) if groups else None
        reader = acts.reader(layer, "val", shuffle=False, with_index=True, **split)
        chunks = tqdm(reader, desc="scanning latents", unit="chunk", disable=not progress or None)
        acc = scan(dictionary, chunks, config.top_contexts, scaled)
        rows = latent_table(dictionary, acc, groups)
        metrics = {**summary_metrics(dictionary, acc, rows), "layer": layer,
                   "models": acts.models, "cache": str(acts.path.resolve())}
        write_json(path / LATENTS_FILE, rows)
        write_tensors(path / SCAN_FILE, acc.tops()._asdict())
        write_json(path / METRICS_FILE, metrics)
        run.mark_done("scan")
    rows, metrics = read_json(path / LATENTS_FILE), read_json(path / METRICS_FILE)
    tops = TopRows(**read_tensors(path / SCAN_FILE)[0])
    shown = shown_latents(rows, config)
    tokenizer = pair.tokenizer if pair is not None else None
    if not run.is_done("contexts") or (tokenizer and not run.finished()["contexts"]["decoded"]):
        contexts = latent_contexts(acts, layer, dictionary, tops, shown, config.window, tokenizer)
        write_json(path / CONTEXTS_FILE, {"window": list(config.window), "latents": contexts})
        run.mark_done("contexts", {"decoded": tokenizer is not None})
    if pair is None or not shown:
        return metrics
    directions = decoder_directions(dictionary, shown)
    if "lens" not in config.skip and not run.is_done("lens"):
        lens = logit_lens(pair, directions, config.lens_tokens)
        write_json(path / LENS_FILE, dict(zip(map(str, shown), lens, strict=True)))
        run.mark_done("lens")
    if "steering" not in config.skip and not run.is_done("steering") and config.steer_latents:
        from difflens.data.corpus import chat_prompts

        chosen = shown[: config.steer_latents]
        scale = float(acts.stats(layer).mean_norm[FT])  # strengths in units of a typical |h_ft|
        samples = steer(pair, layer, chosen, directions[: len(chosen)], scale,
                        config.steer_alphas, chat_prompts()[: config.steer_prompts],
                        config.max_new_tokens)
        write_json(path / STEERING_FILE, {"layer": layer, "scale": scale,
                                          "alphas": list(config.steer_alphas),
                                          "samples": samples})
        run.mark_done("steering")
    return metrics
