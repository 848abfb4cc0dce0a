"""Crosscoder / diff-SAE core: sparse kernels, losses, modes, recovery of planted latents."""

from __future__ import annotations

import pytest
import torch

from difflens.errors import DifflensError
from difflens.methods.dictionary import (
    BASE,
    FT,
    Crosscoder,
    DictionaryConfig,
    DiffSAE,
    LatentKind,
    LatentTag,
    TrainConfig,
    Trainer,
    decoder_cosine,
    delta_norm,
    estimate_scales,
    evaluate,
    fve,
    make_synthetic_pairs,
    tag_latents,
)
from difflens.methods.dictionary.sparse_ops import (
    batch_topk,
    encode_gather,
    rowwise_topk,
    sparse_decode,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def cycle(x: torch.Tensor):
    """Data factory for the trainer: endless passes over ``x`` starting at any row."""

    def start_at(row: int):
        row %= x.shape[0]
        while True:
            yield x[row:]
            row = 0

    return start_at


def train(model, x, steps, lr=3e-3):
    cfg = TrainConfig(steps=steps, batch_size=256, lr=lr, warmup_steps=50, progress=False,
                      log_every=50)
    Trainer(model, cfg).fit(cycle(x))
    return model.eval()


def dense_reference_loss(cc: Crosscoder, x: torch.Tensor, k: int, dead: torch.Tensor):
    """The BatchTopK + AuxK loss written densely with plain autograd (normalizer = identity)."""
    batch, width = x.shape[0], cc.config.width
    xf = x.reshape(batch, -1)
    w_enc, w_dec = cc.W_enc.reshape(width, -1), cc.W_dec.reshape(width, -1)
    acts = torch.relu(xf @ w_enc.T + cc.b_enc)
    scores = (acts * cc.W_dec.norm(dim=-1).sum(-1)).detach()
    mask = scores >= scores.flatten().topk(k * batch).values.min()
    recon = (acts * mask) @ w_dec + cc.b_dec.reshape(-1)
    mse = (recon - xf).pow(2).sum(-1).mean()
    dead_scores = scores.masked_fill(~dead, -1.0)
    top = dead_scores.topk(cc.config.effective_aux_k, dim=1)
    aux_mask = torch.zeros_like(mask).scatter_(1, top.indices, top.values > 0)
    aux = ((acts * aux_mask) @ w_dec - (xf - recon).detach()).pow(2).sum(-1).mean()
    return mse + cc.config.aux_k_alpha * aux, acts * mask


def test_sparse_gradients_match_dense_autograd():
    cfg = DictionaryConfig(d_in=16, width=64, k=4, aux_k=5, dead_tokens=10)
    cc = Crosscoder(cfg)
    ref = Crosscoder(cfg)
    ref.load_state_dict(cc.state_dict())
    dead = torch.arange(64) % 3 == 0
    cc.tokens_since_fired[dead] = 10
    x = torch.randn(32, 2, 16, generator=torch.Generator().manual_seed(1))

    out = cc(x)
    out.losses.total.backward()
    loss, latents = dense_reference_loss(ref, x, 4, dead)
    loss.backward()

    assert out.losses.auxk > 0
    torch.testing.assert_close(out.losses.total, loss)
    torch.testing.assert_close(out.latents, latents)
    for name, p in cc.named_parameters():
        torch.testing.assert_close(p.grad, dict(ref.named_parameters())[name].grad,
                                   atol=1e-6, rtol=1e-5)


def test_sparse_kernels_pass_gradcheck():
    gen = torch.Generator().manual_seed(4)
    batch, width, dim = 5, 7, 3
    x = torch.randn(batch, dim, generator=gen, dtype=torch.float64, requires_grad=True)
    w_enc = torch.randn(width, dim, generator=gen, dtype=torch.float64, requires_grad=True)
    b_enc = torch.randn(width, generator=gen, dtype=torch.float64, requires_grad=True)
    w_dec = torch.randn(width, dim, generator=gen, dtype=torch.float64, requires_grad=True)
    code, _ = batch_topk(torch.rand(batch, width, generator=gen), 2 * batch)

    def fn(x, w_enc, b_enc, w_dec):
        pre = (x @ w_enc.T + b_enc)[code.rows, code.cols]
        values = encode_gather(pre.detach(), x, w_enc, b_enc, code)
        return sparse_decode(values, w_dec, code)

    assert torch.autograd.gradcheck(fn, (x, w_enc, b_enc, w_dec))


def test_batch_topk_is_exact_and_hint_independent():
    scores = torch.relu(torch.randn(64, 200, generator=torch.Generator().manual_seed(2)))
    code, cutoff = batch_topk(scores, 5 * 64)
    assert code.nnz == 5 * 64
    assert cutoff == pytest.approx(float(scores.flatten().topk(5 * 64).values.min()))
    for hint in (cutoff * 0.5, cutoff, cutoff * 3.0):  # too low, exact, too high (fallback)
        other, other_cutoff = batch_topk(scores, 5 * 64, hint=hint)
        assert torch.equal(other.rows, code.rows) and torch.equal(other.cols, code.cols)
        assert other_cutoff == cutoff
    # Row-major order is what embedding_bag needs.
    assert torch.all(code.rows[1:] >= code.rows[:-1])
    # Fewer positive scores than k·B: keep exactly the positive ones.
    sparse_scores = torch.zeros(4, 10)
    sparse_scores[0, 3] = 2.0
    small, small_cutoff = batch_topk(sparse_scores, 8)
    assert small.nnz == 1 and small_cutoff == 2.0


def test_rowwise_topk_picks_only_given_columns():
    scores = torch.rand(5, 4)
    columns = torch.tensor([2, 7, 9, 11])
    code, flat = rowwise_topk(scores, columns, 2, width=12)
    assert code.nnz == 10 and set(code.cols.tolist()) <= set(columns.tolist())
    picked = scores.reshape(-1)[flat].reshape(5, 2).sort(1).values
    torch.testing.assert_close(picked, scores.topk(2, dim=1).values.sort(1).values)


def test_l1_loss_is_the_crosscoder_objective():
    cfg = DictionaryConfig(d_in=8, width=16, sparsity="l1", l1_coef=0.7)
    cc = Crosscoder(cfg)
    x = torch.randn(10, 2, 8)
    out = cc(x)
    f = torch.relu(x.reshape(10, -1) @ cc.W_enc.reshape(16, -1).T + cc.b_enc)
    recon = torch.einsum("bf,fmd->bmd", f, cc.W_dec) + cc.b_dec
    mse = (x - recon).pow(2).sum(dim=(1, 2)).mean()
    penalty = (f * cc.W_dec.norm(dim=-1).sum(-1)).sum(-1).mean()
    torch.testing.assert_close(out.losses.total, mse + 0.7 * penalty)
    torch.testing.assert_close(out.reconstruction, recon)


def test_eval_uses_threshold_and_is_batch_independent():
    data = make_synthetic_pairs(2048, 16, n_ft_only=4, n_shared=6, n_weak=2, seed=3)
    cc = Crosscoder(DictionaryConfig(d_in=16, width=32, k=3, dead_tokens=2048,
                                     threshold_decay=0.9))
    assert float(cc.threshold) < 0  # unset until trained
    train(cc, data.activations, steps=100)
    assert float(cc.threshold) > 0
    x = data.activations[:300]
    full = cc.encode(x)
    assert torch.equal(cc.encode(x[:7]), full[:7])  # no dependence on the rest of the batch
    scaled = full * cc.W_dec.norm(dim=-1).sum(-1)
    assert bool((scaled[full > 0] > float(cc.threshold)).all())
    assert 1.5 < float((full > 0).sum(1).float().mean()) < 6  # θ keeps about k per sample


def test_batchtopk_crosscoder_recovers_planted_directions():
    data = make_synthetic_pairs(4096, 32, n_ft_only=6, n_shared=12, n_weak=6, seed=0)
    cc = Crosscoder(DictionaryConfig(d_in=32, width=64, k=4, dead_tokens=4096,
                                     threshold_decay=0.99))
    train(cc, data.activations, steps=600)
    unit = torch.nn.functional.normalize(cc.W_dec.detach(), dim=-1)
    best = (data.directions @ unit[:, FT].T).max(1)  # ft decoder vs planted direction
    assert float((best.values >= 0.9).float().mean()) >= 0.9
    # The recovered ft-only latents have no base decoder; shared ones do.
    tags = tag_latents(delta_norm(cc.W_dec))
    matched = tags[best.indices]
    assert bool((matched[data.kinds == LatentKind.FT_ONLY] == LatentTag.FT_ONLY).all())
    assert not bool((matched[data.kinds != LatentKind.FT_ONLY] == LatentTag.FT_ONLY).any())
    shared = best.indices[data.kinds == LatentKind.SHARED]
    assert float(decoder_cosine(cc.W_dec)[shared].min()) > 0.9

    # FVE beats the zero-latent baseline (reconstruction = decoder bias only).
    result = evaluate(cc, [data.activations])
    streamed = evaluate(cc, data.activations.split(1000))  # pooled sums, not a mean of batches
    torch.testing.assert_close(streamed.fve, result.fve)
    assert streamed.l0 == pytest.approx(result.l0) and streamed.n_samples == 4096
    baseline = fve(data.activations, cc.decode(torch.zeros(len(data.activations), 64)))
    assert bool((result.fve > 0.9).all()) and bool((baseline < 0.05).all())
    assert bool((result.fve > baseline + 0.8).all())
    assert 2 < result.l0 < 6


def test_diff_sae_recovers_the_directions_that_changed():
    data = make_synthetic_pairs(4096, 32, n_ft_only=6, n_shared=12, n_weak=6, seed=1)
    sae = DiffSAE(DictionaryConfig(d_in=32, width=32, k=2, dead_tokens=4096,
                                   threshold_decay=0.99))
    train(sae, data.activations, steps=400)  # (B, 2, d) pairs are differenced by the SAE
    unit = torch.nn.functional.normalize(sae.W_dec.detach()[:, 0], dim=-1)
    changed = data.kinds != LatentKind.SHARED  # ft-only and weak-base latents change
    best = (data.directions[changed] @ unit.T).abs().max(1).values
    assert float((best >= 0.9).float().mean()) >= 0.9
    diff = data.activations[:, FT] - data.activations[:, BASE]
    out = sae.eval()(diff)
    assert out.reconstruction.shape == diff.shape
    assert float(fve(diff, out.reconstruction)) > 0.8


def test_normalisation_is_stored_and_undone():
    x = torch.randn(512, 2, 16) * torch.tensor([3.0, 0.5])[None, :, None]
    cc = Crosscoder(DictionaryConfig(d_in=16, width=32, k=4))
    scales = estimate_scales([x[:256], x[256:]], cc.config.effective_norm_target)
    cc.normalizer.set_scales(scales)
    normed = cc.normalizer.normalize(x)
    torch.testing.assert_close(normed.norm(dim=-1).mean(0), torch.full((2,), 4.0))
    torch.testing.assert_close(cc.normalizer.denormalize(normed), x)
    # Scale equivariance: 10x the raw input (and 1/10 the factors) gives 10x the output.
    out = cc.eval()(x[:64])
    cc.normalizer.set_scales(scales / 10)
    out10 = cc(x[:64] * 10)
    torch.testing.assert_close(out10.reconstruction, out.reconstruction * 10, rtol=1e-4,
                               atol=1e-4)
    torch.testing.assert_close(out10.latents, out.latents, rtol=1e-4, atol=1e-5)
    with pytest.raises(DifflensError):
        cc.normalizer.set_scales(torch.tensor([1.0, 0.0]))


def test_decoder_metrics_and_tags():
    w = torch.zeros(5, 2, 3)
    w[0, FT, 0] = 1.0  # ft-only
    w[1, BASE, 1] = 1.0  # base-only
    w[2, :, 2] = 1.0  # shared, same direction
    w[3, BASE, 0], w[3, FT, 1] = 0.5, 1.0  # ratio 0.5 -> Δ = 0.25: other, orthogonal
    w[4, BASE, 0], w[4, FT, 0] = 0.05, 1.0  # Δ = 0.025 -> ft-only
    delta = delta_norm(w)
    torch.testing.assert_close(delta, torch.tensor([0.0, 1.0, 0.5, 0.25, 0.025]))
    assert tag_latents(delta).tolist() == [
        LatentTag.FT_ONLY, LatentTag.BASE_ONLY, LatentTag.SHARED, LatentTag.OTHER,
        LatentTag.FT_ONLY,
    ]
    torch.testing.assert_close(decoder_cosine(w), torch.tensor([0.0, 0.0, 1.0, 0.0, 1.0]))


def test_bad_inputs_raise_difflens_error():
    cc = Crosscoder(DictionaryConfig(d_in=8, width=16))
    with pytest.raises(DifflensError, match="shape"):
        cc(torch.randn(4, 8))
    with pytest.raises(DifflensError, match="shape"):
        cc(torch.randn(4, 2, 9))
    with pytest.raises(DifflensError):
        DictionaryConfig(d_in=8, width=0)
    with pytest.raises(DifflensError):
        DictionaryConfig(d_in=8, width=8, sparsity="topk")  # type: ignore[arg-type]
    with pytest.raises(DifflensError, match="shape"):
        DiffSAE(DictionaryConfig(d_in=8, width=16))(torch.randn(4, 3, 8))
