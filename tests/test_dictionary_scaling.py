"""Latent Scaling: closed form = least squares, streaming = one batch, and the seed's diagnosis."""

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
    LatentScaling,
    LatentTag,
    TrainConfig,
    Trainer,
    delta_norm,
    latent_scaling,
    make_synthetic_pairs,
    tag_latents,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def small_crosscoder() -> tuple[Crosscoder, torch.Tensor]:
    """An untrained crosscoder with non-trivial scales and threshold, and raw data for it."""
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(60, 2, 6, generator=gen) * torch.tensor([2.0, 0.7])[None, :, None]
    cc = Crosscoder(DictionaryConfig(d_in=6, width=12, seed=3))
    with torch.no_grad():
        cc.b_dec.normal_(generator=gen)
        cc.W_dec.mul_(torch.rand(12, 2, 1, generator=gen) * 10)  # varied decoder norms
    cc.normalizer.set_scales(torch.tensor([0.5, 1.7]))
    cc.threshold.fill_(0.05)
    return cc.eval(), x


def lstsq_beta(f: torch.Tensor, direction: torch.Tensor, y: torch.Tensor) -> float:
    """argmin_β Σ_n ‖β f_n d − y_n‖² by a generic least-squares solver."""
    a = (f[:, None] * direction[None, :]).reshape(-1, 1)
    return float(torch.linalg.lstsq(a, y.reshape(-1, 1)).solution)


@pytest.mark.parametrize("raw_units", [False, True])
def test_closed_form_equals_least_squares(raw_units):
    cc, x = small_crosscoder()
    latents = torch.arange(12)
    result = latent_scaling(cc, [x[:25], x[25:]], latents, raw_units=raw_units)
    with torch.no_grad():
        xn = cc.normalizer.normalize(x).double()
        out = cc.forward_normalized(xn.float())
        f, recon = out.latents.double(), out.reconstruction.double()
        w_dec = cc.W_dec.double()
        scale = cc.normalizer.scale.double() if raw_units else torch.ones(2, dtype=torch.float64)
    checked = 0
    for j in latents.tolist():
        if int((f[:, j] > 0).sum()) < 2:
            assert int(result.n_active[j]) == int((f[:, j] > 0).sum())
            continue
        checked += 1
        direction = w_dec[j, FT] / scale[FT]
        for m in (BASE, FT):
            act, rec = xn[:, m] / scale[m], recon[:, m] / scale[m]
            own = w_dec[j, m] / scale[m]
            targets = {
                "error": act - (rec - f[:, j, None] * own),
                "reconstruction": rec,
                "activation": act,
            }
            for name, y in targets.items():
                got = float(getattr(result, f"beta_{name}")[m, result.latents == j])
                want = lstsq_beta(f[:, j], direction, y)
                assert got == pytest.approx(want, rel=1e-6, abs=1e-9), (j, m, name)
        ratio_e = result.beta_error[BASE, j] / result.beta_error[FT, j]
        torch.testing.assert_close(result.nu_error[j], ratio_e)
    assert checked >= 4


def test_streaming_and_merging_equal_one_pass():
    cc, x = small_crosscoder()
    one = latent_scaling(cc, [x], [1, 4, 7])
    a, b = LatentScaling(cc, [1, 4, 7]), LatentScaling(cc, [1, 4, 7])
    for chunk in x[:20], x[20:33]:
        a.update(chunk)
    b.update(x[33:])
    merged = a.merge(b).result()
    for got, want in zip(merged, one, strict=True):
        torch.testing.assert_close(got, want, equal_nan=True)
    assert cc.training is False  # the accumulator restored the module's mode


def cycle(x: torch.Tensor):
    def start_at(row: int):
        row %= x.shape[0]
        while True:
            yield x[row:]
            row = 0

    return start_at


def test_latent_scaling_exposes_false_ft_only_latents_of_an_l1_crosscoder():
    """The seed's complete-shrinkage diagnosis, end to end.

    Planted: 6 ft-only latents, 12 shared, and 6 shared latents that are weak (0.3x) in the base
    model.  A strong-L1 crosscoder shrinks the weak latents' base decoders to ~0, so Δ_norm calls
    them ft-only alongside the real ones.  Latent Scaling with the error target tells them apart:
    ν^ε ≈ 0 for the real ft-only latents, ≈ 0.3 (the planted base presence) for the false ones.
    """
    data = make_synthetic_pairs(4096, 32, n_ft_only=6, n_shared=12, n_weak=6, seed=0)
    cc = Crosscoder(DictionaryConfig(d_in=32, width=64, sparsity="l1", l1_coef=2.0,
                                     dead_tokens=4096))
    train_cfg = TrainConfig(steps=1000, batch_size=256, lr=3e-3, warmup_steps=50,
                            progress=False, log_every=100)
    Trainer(cc, train_cfg).fit(cycle(data.activations))
    cc.eval()

    ft_only = (tag_latents(delta_norm(cc.W_dec)) == LatentTag.FT_ONLY).nonzero().squeeze(1)
    result = latent_scaling(cc, [data.activations[:2048], data.activations[2048:]], ft_only,
                            raw_units=True)
    alive = result.n_active > 50
    unit = torch.nn.functional.normalize(cc.W_dec.detach()[ft_only, FT], dim=-1)
    cos, planted = (unit @ data.directions.T).max(1)
    matched = alive & (cos > 0.9)  # an ft-only-tagged latent that is one planted latent
    assert int(matched.sum()) >= 0.8 * int(alive.sum())
    kind = data.kinds[planted]
    true_ft = matched & (kind == LatentKind.FT_ONLY)
    false_ft = matched & (kind == LatentKind.WEAK_BASE)

    # The phenomenon is there: the L1 crosscoder tags most weak-base latents ft-only ...
    assert int(true_ft.sum()) >= 5
    assert int(false_ft.sum()) >= 4
    # ... and Latent Scaling separates them cleanly.
    assert float(result.nu_error[true_ft].abs().max()) < 0.05
    assert float(result.nu_reconstruction[true_ft].abs().max()) < 0.05
    assert float(result.nu_error[false_ft].min()) > 0.2
    torch.testing.assert_close(result.nu_error[false_ft].median(),
                               torch.tensor(0.3, dtype=torch.float64), atol=0.08, rtol=0)
    # Complete shrinkage (the base signal sits in the error), more than latent decoupling.
    assert bool((result.nu_error[false_ft] > result.nu_reconstruction[false_ft]).all())


def test_latent_scaling_rejects_what_it_cannot_measure():
    sae = DiffSAE(DictionaryConfig(d_in=6, width=12))
    with pytest.raises(DifflensError, match="two models"):
        LatentScaling(sae)
    cc, _ = small_crosscoder()
    with pytest.raises(DifflensError, match="latent indices"):
        LatentScaling(cc, [3, 12])
