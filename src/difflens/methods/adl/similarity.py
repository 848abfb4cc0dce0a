"""ADL steering similarity: is steered text semantically closer to the finetune's documents?

Each generated sample i gets a score per dataset D: its mean cosine similarity to D's documents,

    s_i(D) = (1/|D|) Σ_j cos(e_i, e_j) = e_i · m_D,   m_D = (1/|D|) Σ_j e_j  (unit-norm e),

i.e. the seed paper's "similarity between each generated sample and the dataset".  The mean
pairwise cosine and the dot product with the (un-normalised) mean embedding are the same number,
so it costs one matrix-vector product.  The statistic reported is the mean of s_i over samples;
its 95% interval is a percentile bootstrap over the generated samples (the datasets are held
fixed), and steered > unsteered is tested with a one-sided permutation test on the finetune
scores.  Bootstrap and permutations are drawn as index matrices, not Python loops.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from difflens.errors import DifflensError

if TYPE_CHECKING:
    from difflens.embeddings import Embedder

DEFAULT_N_BOOT = 1_000
DEFAULT_N_PERM = 10_000
CONFIDENCE = 0.95
# Index-matrix elements drawn at once (4M int64 = 32 MB): bounds memory for many samples.
_BLOCK_ELEMENTS = 1 << 22


def sample_scores(samples: np.ndarray, dataset: np.ndarray) -> np.ndarray:
    """Mean cosine of each sample to a dataset.

    Args:
        samples: ``(n, dim)`` unit-norm embeddings; dataset: ``(m, dim)`` unit-norm embeddings.
    Returns:
        ``(n,)`` float64 scores ``s_i = mean_j cos(e_i, e_j)``.
    """
    return samples.astype(np.float64) @ dataset.astype(np.float64).mean(axis=0)


def _blocks(total: int, width: int) -> list[int]:
    step = max(1, _BLOCK_ELEMENTS // max(width, 1))
    return [min(step, total - s) for s in range(0, total, step)]


def bootstrap_means(scores: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """Means of ``n_boot`` resamples (with replacement) of ``scores`` ``(n,)``: ``(n_boot,)``.

    Equivalent to ``n_boot`` successive ``scores[rng.integers(0, n, n)].mean()`` calls (the
    same random stream), drawn in blocks of index rows.
    """
    n = scores.shape[0]
    out = [scores[rng.integers(0, n, size=(rows, n))].mean(axis=1) for rows in _blocks(n_boot, n)]
    return np.concatenate(out)


def bootstrap_interval(
    scores: np.ndarray, n_boot: int, rng: np.random.Generator, confidence: float = CONFIDENCE
) -> dict[str, float]:
    """Mean of ``scores`` with a percentile bootstrap interval: ``{"mean", "ci_low", "ci_high"}``.

    The interval is widened to include the point estimate (it can miss it by float rounding
    when every resample is identical).
    """
    means = bootstrap_means(scores, n_boot, rng)
    alpha = (1.0 - confidence) / 2
    low, high = np.quantile(means, [alpha, 1.0 - alpha])
    mean = float(scores.mean())
    return {"mean": mean, "ci_low": float(min(low, mean)), "ci_high": float(max(high, mean))}


def permutation_p_value(
    a: np.ndarray, b: np.ndarray, n_perm: int, rng: np.random.Generator
) -> float:
    """One-sided p-value for mean(a) > mean(b) by label permutation.

    Each permutation shuffles the pooled scores (as ``rng.permuted`` on row copies, i.e. the
    same stream as successive ``rng.permutation`` calls) and takes mean(first len(a)) −
    mean(rest).  p = (1 + #{perm ≥ observed}) / (1 + n_perm), never 0.
    """
    pooled = np.concatenate([a, b]).astype(np.float64)
    n_a = a.shape[0]
    observed = a.mean() - b.mean()
    # A tolerance keeps ties (e.g. identical groups) from flipping on float rounding.
    tol = 1e-12 * max(1.0, abs(observed))
    hits = 0
    for rows in _blocks(n_perm, pooled.shape[0]):
        perms = rng.permuted(np.broadcast_to(pooled, (rows, pooled.shape[0])), axis=1)
        stats = perms[:, :n_a].mean(axis=1) - perms[:, n_a:].mean(axis=1)
        hits += int((stats >= observed - tol).sum())
    return (1 + hits) / (1 + n_perm)


def similarity_stage(
    steered: list[str],
    unsteered: list[str],
    ft_texts: list[str],
    ref_texts: list[str],
    embedder: Embedder | None = None,
    n_boot: int = DEFAULT_N_BOOT,
    seed: int = 0,
    n_perm: int = DEFAULT_N_PERM,
    base_steered: list[str] | None = None,
    base_unsteered: list[str] | None = None,
    description: str | None = None,
) -> dict[str, Any]:
    """Cosine similarity of steered/unsteered samples to finetune documents and reference text.

    Args:
        steered, unsteered: generated samples (e.g. from the same prompts, with and without
            steering); ft_texts: finetune documents; ref_texts: general text.
        embedder: anything with ``embed(texts) -> (N, dim)`` unit rows; default the bundled
            MiniLM (:func:`difflens.embeddings.load_embedder`).
        n_boot: bootstrap resamples per interval; n_perm: permutations for the p-value.
    Returns:
        JSON-able ``{"embedder", "n_steered", "n_unsteered", "n_finetune", "n_reference",
        "n_boot", "n_perm", "confidence", "seed", "steered_finetune", "unsteered_finetune",
        "steered_reference", "unsteered_reference", "reference_finetune", "difference",
        "p_value", "steered_above_unsteered"}``.  The four sample/dataset entries are
        ``{"mean", "ci_low", "ci_high"}``; ``reference_finetune`` (mean similarity of the
        reference texts to the finetune documents, a floor) is a float; ``difference`` is
        steered_finetune − unsteered_finetune; ``p_value`` tests steered > unsteered on the
        finetune scores; ``steered_above_unsteered`` means the two 95% intervals do not overlap
        and the steered one is higher.

        ``comparisons``: every steered-vs-unsteered comparison made, each ``{"model",
        "against", "steered", "unsteered", "difference", "p_value",
        "steered_above_unsteered"}`` — the finetuned model against the finetune documents (the
        figures above); with ``base_steered`` / ``base_unsteered`` the base model steered with
        the same vector against the documents (does the difference alone carry the domain? a
        finetuned model that already talks about its domain saturates the first comparison);
        with ``description`` both models against the finetune's description (taboo-like
        organisms' documents never name the secret, the description does).
    """
    for what, texts in (("steered samples", steered), ("unsteered samples", unsteered),
                        ("finetune documents", ft_texts), ("reference texts", ref_texts)):
        if not texts:
            raise DifflensError(f"steering similarity needs {what}; none were given")
    if n_boot < 1 or n_perm < 1:
        raise DifflensError(f"n_boot and n_perm must be positive, got {n_boot} and {n_perm}")
    if embedder is None:
        from difflens.embeddings import load_embedder

        embedder = load_embedder()
    # One embed call per group keeps each text embedded once.
    e_st, e_un, e_ft, e_ref = (embedder.embed(list(t))
                               for t in (steered, unsteered, ft_texts, ref_texts))
    rng = np.random.default_rng(seed)
    scores = {
        "steered_finetune": sample_scores(e_st, e_ft),
        "unsteered_finetune": sample_scores(e_un, e_ft),
        "steered_reference": sample_scores(e_st, e_ref),
        "unsteered_reference": sample_scores(e_un, e_ref),
    }
    result: dict[str, Any] = {
        "embedder": getattr(embedder, "name", type(embedder).__name__),
        "n_steered": len(steered),
        "n_unsteered": len(unsteered),
        "n_finetune": len(ft_texts),
        "n_reference": len(ref_texts),
        "n_boot": n_boot,
        "n_perm": n_perm,
        "confidence": CONFIDENCE,
        "seed": seed,
    }
    # Intervals draw from one generator in a fixed order, so results depend only on `seed`.
    for key, values in scores.items():
        result[key] = bootstrap_interval(values, n_boot, rng)
    result["reference_finetune"] = float(sample_scores(e_ref, e_ft).mean())
    st, un = result["steered_finetune"], result["unsteered_finetune"]
    result["difference"] = st["mean"] - un["mean"]
    result["p_value"] = permutation_p_value(scores["steered_finetune"],
                                            scores["unsteered_finetune"], n_perm, rng)
    result["steered_above_unsteered"] = bool(st["ci_low"] > un["ci_high"])
    comparisons = [{"model": "finetuned", "against": "finetune documents",
                    **{k: result[k] for k in ("difference", "p_value", "steered_above_unsteered")},
                    "steered": st, "unsteered": un}]
    # Drawn after the figures above, from the same generator: those stay what they were.
    targets = {"finetune documents": e_ft}
    if description and description.strip():
        targets["description"] = embedder.embed([description])
    models = {"finetuned": (e_st, e_un)}
    if base_steered and base_unsteered:
        models["base"] = (embedder.embed(list(base_steered)), embedder.embed(list(base_unsteered)))
        result["n_base_steered"] = len(base_steered)
        result["n_base_unsteered"] = len(base_unsteered)
    for against, target in targets.items():
        for model, (e_a, e_b) in models.items():
            if (model, against) != ("finetuned", "finetune documents"):
                comparisons.append(_comparison(model, against, e_a, e_b, target, n_boot, n_perm,
                                               rng))
    result["comparisons"] = comparisons
    return result


def _comparison(model: str, against: str, steered: np.ndarray, unsteered: np.ndarray,
                target: np.ndarray, n_boot: int, n_perm: int,
                rng: np.random.Generator) -> dict[str, Any]:
    """Steered vs unsteered embeddings ``(n, dim)`` scored against ``target`` ``(m, dim)``."""
    a, b = sample_scores(steered, target), sample_scores(unsteered, target)
    st, un = bootstrap_interval(a, n_boot, rng), bootstrap_interval(b, n_boot, rng)
    return {"model": model, "against": against, "steered": st, "unsteered": un,
            "difference": st["mean"] - un["mean"],
            "p_value": permutation_p_value(a, b, n_perm, rng),
            "steered_above_unsteered": bool(st["ci_low"] > un["ci_high"])}
