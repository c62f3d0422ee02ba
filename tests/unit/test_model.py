"""Unit tests for dmf_ray.model (fusion, losses, masking): tiny dims, CPU, no Ray."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dmf_ray.model import (
    DynamicFusion,
    FusionConfig,
    FusionOutput,
    MaskSchedule,
    fusion_losses,
    gate_similarity,
    sample_training_mask,
)
from dmf_ray.model.fusion import LEGACY_SETTINGS



DIMS = [6, 8, 5]
MODS = ["smiles", "selfies", "graph"]


def tiny_config(**kw) -> FusionConfig:
    args = dict(modalities=MODS, dims=DIMS, latent_dim=12, gate_hidden=8, attention_hidden=8,
                decoder_hidden=16, dropout=0.0)
    args.update(kw)
    return FusionConfig(**args)


def tiny_model(seed=0, **kw) -> DynamicFusion:
    torch.manual_seed(seed)
    return DynamicFusion(tiny_config(**kw)).eval()


def random_inputs(B, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, d, generator=g) for d in DIMS]


# -- config ------------------------------------------------------------------------------------


def test_config_round_trip_through_json():
    import json

    cfg = tiny_config(align_weight=0.3)
    again = FusionConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg


def test_config_validate_reports_every_problem_at_once():
    with pytest.raises(ValueError) as info:
        FusionConfig(modalities=["a", "a", ""], dims=[4, 0], latent_dim=-1, dropout=1.5,
                     entropy_weight=float("nan"))
    msg = str(info.value)
    for fragment in ("unique", "non-empty string", "positive ints", "dims has 2 entries",
                     "latent_dim", "dropout", "entropy_weight"):
        assert fragment in msg, fragment


def test_config_from_dict_rejects_unknown_and_missing_fields():
    expected = "(?s)unknown field 'latnt_dim'.*missing required field 'dims'"
    with pytest.raises(ValueError, match=expected):
        FusionConfig.from_dict({"modalities": ["a"], "latnt_dim": 4})


# -- masked attention --------------------------------------------------------------------------


def test_masked_softmax_is_exactly_zero_off_visible_and_sums_to_one():
    model = tiny_model()
    B = 64
    g = torch.Generator().manual_seed(3)
    present = torch.rand(B, 3, generator=g) < 0.6
    present[0] = False  # nothing at all
    present[1] = torch.tensor([True, False, False])
    out = model(random_inputs(B), present)
    alpha = out.attention
    assert torch.all(alpha[~present] == 0)
    assert torch.all(alpha[present] > 0)
    has = present.any(1)
    torch.testing.assert_close(alpha[has].sum(1), torch.ones(int(has.sum())))
    # a sample with no visible modality: zeros, never NaN, flagged by has_input
    assert torch.equal(out.has_input, has)
    assert torch.all(out.fused[~has] == 0) and torch.all(alpha[~has] == 0)
    for t in [out.fused, out.attention, out.latents, *out.gates, *out.reconstructions]:
        assert torch.isfinite(t).all()


def test_single_visible_modality_gives_its_latent():
    model = tiny_model()
    B = 5
    for m in range(3):
        present = torch.zeros(B, 3, dtype=torch.bool)
        present[:, m] = True
        out = model(random_inputs(B), present)
        assert torch.all(out.attention[:, m] == 1)
        torch.testing.assert_close(out.fused, out.latents[:, m], rtol=0, atol=0)


def test_masked_modalities_are_hidden_but_kept_as_targets():
    model = tiny_model()
    B = 4
    xs = random_inputs(B)
    present = torch.ones(B, 3, dtype=torch.bool)
    masked = torch.zeros(B, 3, dtype=torch.bool)
    masked[:, 1] = True
    out = model(xs, present, masked)
    ref = model([xs[0], None, xs[2]], torch.tensor([[True, False, True]] * B))
    torch.testing.assert_close(out.fused, ref.fused)
    assert torch.all(out.attention[:, 1] == 0)
    torch.testing.assert_close(out.normalized_inputs[1], xs[1])  # default stats are 0 / 1
    assert torch.all(ref.normalized_inputs[1] == 0)


def test_nan_and_garbage_in_absent_rows_never_leak():
    model = tiny_model(dropout=0.1).train()
    B = 8
    xs = random_inputs(B)
    present = torch.ones(B, 3, dtype=torch.bool)
    present[::2, 1] = False
    present[3] = False
    dirty = [x.clone() for x in xs]
    dirty[1][::2] = float("nan")
    dirty[0][3] = float("inf")
    dirty[2][3] = float("-inf")
    clean = [torch.where(present[:, m : m + 1], x, 0.0) for m, x in enumerate(xs)]

    torch.manual_seed(0)
    out = model(dirty, present)
    losses = fusion_losses(model.config, out)
    losses["total"].backward()
    for t in [out.fused, out.attention, out.latents, *out.gates, *out.reconstructions,
              *out.normalized_inputs, *losses.values()]:
        assert torch.isfinite(t).all()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name

    torch.manual_seed(0)
    ref = model(clean, present)
    torch.testing.assert_close(out.fused, ref.fused, rtol=0, atol=0)


def test_no_nan_gradient_when_a_batch_has_no_visible_input():
    model = tiny_model().train()
    B = 4
    present = torch.zeros(B, 3, dtype=torch.bool)
    xs = [torch.full((B, d), float("nan")) for d in DIMS]
    out = model(xs, present)
    losses = fusion_losses(model.config, out)
    assert all(v.item() == 0 for v in losses.values())
    losses["total"].backward()
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in model.parameters())
    assert torch.all(out.fused == 0)


def test_inputs_may_be_a_mapping_and_bad_shapes_are_named():
    model = tiny_model()
    xs = random_inputs(3)
    present = torch.tensor([[True, False, True]] * 3)
    a = model(xs, present)
    b = model({"smiles": xs[0], "graph": xs[2]}, present)
    torch.testing.assert_close(a.fused, b.fused)
    with pytest.raises(ValueError, match="'selfies'.*\\[3, 8\\]"):
        model([xs[0], torch.zeros(3, 7), xs[2]], present)
    with pytest.raises(ValueError, match="unknown modalities"):
        model({"smile": xs[0]}, present)
    with pytest.raises(ValueError, match="expected 3 inputs"):
        model(xs[:2], present)
    with pytest.raises(ValueError, match="bool tensor"):
        model(xs, present.float())
    with pytest.raises(ValueError, match="'selfies' is None but present"):
        model([xs[0], None, xs[2]], torch.ones(3, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="masked must be a bool tensor"):
        model(xs, present, present.float())


def test_normalization_buffers_are_applied_and_std_is_floored():
    model = tiny_model()
    B = 4
    xs = random_inputs(B)
    mean = np.linspace(-1, 1, DIMS[0])
    std = np.full(DIMS[0], 2.0)
    std[0] = 0.0  # constant feature
    model.set_normalization({"smiles": (mean, std)})
    xs[0][:, 0] = float(mean[0])  # the constant feature, at its mean
    out = model(xs, torch.ones(B, 3, dtype=torch.bool))
    expected = (xs[0] - torch.tensor(mean, dtype=torch.float32)) / torch.tensor(
        np.maximum(std, 1e-6), dtype=torch.float32)
    torch.testing.assert_close(out.normalized_inputs[0], expected)
    assert torch.isfinite(out.normalized_inputs[0]).all()
    assert model.normalizers[0].std[0].item() == pytest.approx(1e-6)
    stats = model.get_normalization()
    np.testing.assert_allclose(stats["smiles"][0], mean, rtol=1e-6)
    np.testing.assert_array_equal(stats["graph"][1], np.ones(DIMS[2]))
    # denormalize inverts the normalisation
    torch.testing.assert_close(model.denormalize(out.normalized_inputs)[0], xs[0])
    assert "normalizers.0.mean" in model.state_dict()


def test_set_normalization_is_all_or_nothing_with_every_problem_named():
    model = tiny_model()
    with pytest.raises(ValueError) as info:
        model.set_normalization({
            "smiles": (np.zeros(6), np.ones(6) * 3),
            "selfies": (np.zeros(7), np.ones(8)),
            "graph": (np.zeros(5), -np.ones(5)),
            "image": (np.zeros(1), np.ones(1)),
        })
    msg = str(info.value)
    assert "selfies: mean has shape (7,)" in msg and "graph: std contains negative" in msg
    assert "unknown modality 'image'" in msg
    assert torch.all(model.normalizers[0].std == 1)  # the good entry was not applied either


def test_embed_restores_training_mode_and_disables_grad():
    model = tiny_model(dropout=0.5).train()
    xs = random_inputs(6)
    present = torch.ones(6, 3, dtype=torch.bool)
    a = model.embed(xs, present)
    b = model.embed(xs, present)
    assert model.training
    assert not a.fused.requires_grad
    torch.testing.assert_close(a.fused, b.fused)  # deterministic: dropout was off


def test_embed_without_reconstructions_skips_decoders_and_gives_the_same_embedding():
    model = tiny_model()
    xs = random_inputs(5)
    present = torch.tensor([[1, 1, 0], [1, 0, 1], [0, 1, 1], [1, 1, 1], [0, 0, 1]], dtype=torch.bool)
    full = model.embed(xs, present)
    lean = model.embed(xs, present, reconstruct=False)
    assert lean.reconstructions is None and len(full.reconstructions) == 3
    torch.testing.assert_close(lean.fused, full.fused)
    torch.testing.assert_close(lean.attention, full.attention)


# -- losses against hand-computed values -------------------------------------------------------


def hand_output(present, visible, *, fused=None, latents=None, gates=None, attention=None,
                recon=None, targets=None, dims=(2, 3)):
    B, M = present.shape
    d = 2
    return FusionOutput(
        fused=fused if fused is not None else torch.ones(B, d),
        attention=(attention if attention is not None
                   else visible.float() / visible.sum(1, keepdim=True).clamp_min(1)),
        latents=latents if latents is not None else torch.ones(B, M, d),
        gates=gates if gates is not None else [torch.full((B, dm), 0.5) for dm in dims],
        reconstructions=recon if recon is not None else [torch.zeros(B, dm) for dm in dims],
        normalized_inputs=targets if targets is not None else [torch.zeros(B, dm) for dm in dims],
        present=present,
        visible=visible,
    )


CFG2 = FusionConfig(modalities=["a", "b"], dims=[2, 3], latent_dim=2, align_weight=0.5,
                    diversity_weight=0.25, entropy_weight=2.0, sparsity_weight=0.1)


def test_reconstruction_over_masked_pairs_and_self_reconstruction_over_visible_ones():
    present = torch.tensor([[True, True], [True, True], [True, False]])
    visible = torch.tensor([[True, False], [False, True], [True, False]])
    recon = [torch.tensor([[9.0, 9.0], [1.0, 2.0], [9.0, 9.0]]),
             torch.tensor([[3.0, 0.0, 0.0], [9.0, 6.0, 3.0], [9.0, 9.0, 9.0]])]
    out = hand_output(present, visible, recon=recon)
    paper = fusion_losses(CFG2.model_copy(update={"self_reconstruction_weight": 0.0}), out)
    # masked pairs: (0, b) err 9/3 = 3 ; (1, a) err (1 + 4)/2 = 2.5 ; sample 2's b is absent
    assert paper["reconstruction"].item() == pytest.approx((3.0 + 2.5) / 2)
    # visible pairs: (0, a) err 81 ; (1, b) err (81 + 36 + 9)/3 = 42 ; (2, a) err 81 ;
    # sample 2's b is absent, so it counts in neither term
    assert paper["self_reconstruction"].item() == pytest.approx((81.0 + 42.0 + 81.0) / 3)
    weighted = fusion_losses(CFG2.model_copy(update={"self_reconstruction_weight": 0.5}), out)
    torch.testing.assert_close(weighted["total"], paper["total"] + 0.5 * paper["self_reconstruction"])
    nothing_masked = hand_output(present, present, recon=recon)
    assert fusion_losses(CFG2, nothing_masked)["reconstruction"].item() == 0.0


def test_models_saved_before_self_reconstruction_load_without_it():
    saved = tiny_config().to_dict()
    del saved["self_reconstruction_weight"]
    assert FusionConfig.from_dict(saved).self_reconstruction_weight == 0.0
    # Every setting of the legacy table, each missing alone, loads at the value old models used.
    for key, value in LEGACY_SETTINGS.items():
        saved = {k: v for k, v in tiny_config().to_dict().items() if k != key}
        assert getattr(FusionConfig.from_dict(saved), key) == value, key


def test_alignment_loss():
    present = torch.ones(2, 2, dtype=torch.bool)
    visible = torch.tensor([[True, True], [True, False]])
    fused = torch.tensor([[1.0, 0.0], [3.0, 3.0]])
    latents = torch.tensor([[[2.0, 0.0], [0.0, 5.0]],      # cos 1, cos 0
                            [[-1.0, -1.0], [7.0, 7.0]]])   # cos -1, (invisible)
    out = hand_output(present, visible, fused=fused, latents=latents)
    sp = lambda v: math.log1p(math.exp(v))  # noqa: E731
    expected = (sp(-1.0) + sp(0.0) + sp(1.0)) / 3
    assert fusion_losses(CFG2, out)["alignment"].item() == pytest.approx(expected, rel=1e-6)


def test_sparsity_loss_is_mean_l1_over_visible_pairs():
    present = torch.ones(2, 2, dtype=torch.bool)
    visible = torch.tensor([[True, True], [False, True]])
    gates = [torch.tensor([[0.2, 0.4], [0.9, 0.9]]),
             torch.tensor([[0.1, 0.1, 0.1], [0.6, 0.0, 0.0]])]
    out = hand_output(present, visible, gates=gates)
    expected = (0.3 + 0.1 + 0.2) / 3
    assert fusion_losses(CFG2, out)["sparsity"].item() == pytest.approx(expected, rel=1e-6)


def test_entropy_loss_is_one_minus_normalised_entropy():
    cfg = FusionConfig(modalities=["a", "b", "c"], dims=[2, 3, 2], latent_dim=2)
    present = torch.ones(4, 3, dtype=torch.bool)
    visible = torch.tensor([[True, True, False], [True, True, True], [True, False, False],
                            [True, True, True]])
    attention = torch.tensor([[0.9, 0.1, 0.0], [1 / 3, 1 / 3, 1 / 3], [1.0, 0.0, 0.0],
                              [0.5, 0.25, 0.25]])
    out = hand_output(present, visible, attention=attention, dims=(2, 3, 2))
    h0 = -(0.9 * math.log(0.9) + 0.1 * math.log(0.1)) / math.log(2)
    h3 = -(0.5 * math.log(0.5) + 2 * 0.25 * math.log(0.25)) / math.log(3)
    expected = ((1 - h0) + 0.0 + (1 - h3)) / 3  # sample 2 has one visible: excluded
    assert fusion_losses(cfg, out)["entropy"].item() == pytest.approx(expected, rel=1e-5)


def numpy_cka2(a, b):
    a = a - a.mean(0)
    b = b - b.mean(0)
    ka, kb = a @ a.T, b @ b.T
    return float((ka * kb).sum() ** 2 / ((ka * ka).sum() * (kb * kb).sum()))


def test_diversity_is_squared_cka_of_gate_patterns():
    g = torch.Generator().manual_seed(0)
    B = 6
    present = torch.ones(B, 2, dtype=torch.bool)
    ga = torch.rand(B, 2, generator=g)
    # same pattern in a different dim: gb = ga @ Q with orthonormal rows -> identical Gram matrix
    q, _ = torch.linalg.qr(torch.randn(3, 3, generator=g))
    gb_same = ga @ q[:2] * 0.5
    out = hand_output(present, present, gates=[ga, gb_same])
    assert fusion_losses(CFG2, out)["diversity"].item() == pytest.approx(1.0, rel=1e-5)

    gb = torch.rand(B, 3, generator=g)
    out = hand_output(present, present, gates=[ga, gb])
    expected = numpy_cka2(ga.double().numpy(), gb.double().numpy())
    assert 0 < expected < 1
    assert fusion_losses(CFG2, out)["diversity"].item() == pytest.approx(expected, rel=1e-4)

    # orthogonal sample patterns (both orthogonal to the all-ones vector) -> 0
    u = torch.tensor([1.0, -1.0, 0.0, 0.0, 0.0, 0.0])
    v = torch.tensor([0.0, 0.0, 1.0, -1.0, 0.0, 0.0])
    out = hand_output(present, present, gates=[0.5 + 0.1 * u[:, None] * torch.ones(1, 2),
                                               0.5 + 0.2 * v[:, None] * torch.ones(1, 3)])
    assert fusion_losses(CFG2, out)["diversity"].item() == pytest.approx(0.0, abs=1e-7)


def test_diversity_uses_only_shared_visible_samples_and_guards_degenerate_cases():
    g = torch.Generator().manual_seed(1)
    B = 8
    ga, gb = torch.rand(B, 2, generator=g), torch.rand(B, 3, generator=g)
    present = torch.ones(B, 2, dtype=torch.bool)
    visible = present.clone()
    visible[:3, 1] = False
    out = hand_output(present, visible, gates=[ga, torch.where(visible[:, 1:], gb, 0.0)])
    expected = numpy_cka2(ga[3:].double().numpy(), gb[3:].double().numpy())
    assert fusion_losses(CFG2, out)["diversity"].item() == pytest.approx(expected, rel=1e-4)

    # one shared sample: contributes 0
    visible = torch.tensor([[True, True]] + [[True, False]] * (B - 1))
    out = hand_output(present, visible, gates=[ga, gb])
    assert fusion_losses(CFG2, out)["diversity"].item() == 0.0

    # constant gates: 0 with finite gradients
    ga_c = torch.full((B, 2), 0.7, requires_grad=True)
    gb_r = gb.clone().requires_grad_(True)
    sim = gate_similarity(ga_c, gb_r, torch.ones(B))
    sim.backward()
    assert sim.item() == 0.0
    assert torch.isfinite(ga_c.grad).all() and torch.isfinite(gb_r.grad).all()


def test_total_is_the_weighted_sum_of_terms():
    model = tiny_model(self_reconstruction_weight=0.3)
    B = 16
    present = torch.rand(B, 3, generator=torch.Generator().manual_seed(2)) < 0.8
    masked = sample_training_mask(present, 0.4, torch.Generator().manual_seed(5))
    out = model(random_inputs(B), present, masked)
    L = fusion_losses(model.config, out, present, masked)
    c = model.config
    expected = (L["reconstruction"] + c.align_weight * L["alignment"]
                + c.diversity_weight * L["diversity"] + c.entropy_weight * L["entropy"]
                + c.sparsity_weight * L["sparsity"] + c.self_reconstruction_weight * L["self_reconstruction"])
    torch.testing.assert_close(L["total"], expected)


def test_losses_catch_forward_called_with_visible_instead_of_present():
    model = tiny_model()
    B = 8
    present = torch.ones(B, 3, dtype=torch.bool)
    masked = torch.zeros(B, 3, dtype=torch.bool)
    masked[:, 0] = True
    out = model(random_inputs(B), present & ~masked)  # the mistake
    with pytest.raises(ValueError, match="present differs"):
        fusion_losses(model.config, out, present, masked)


def test_entropy_term_gradient_descent_moves_attention_toward_uniform():
    model = tiny_model()
    with torch.no_grad():
        model.modality_bias.copy_(torch.tensor([4.0, -2.0, 0.0]))  # start near collapse
    B = 32
    xs = random_inputs(B)
    present = torch.ones(B, 3, dtype=torch.bool)

    def mean_entropy():
        with torch.no_grad():
            a = model(xs, present).attention
            return float(-(a * a.log()).sum(1).mean())

    start = mean_entropy()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(50):
        opt.zero_grad()
        fusion_losses(model.config, model(xs, present))["entropy"].backward()
        opt.step()
    end = mean_entropy()
    assert start < 0.6 * math.log(3)
    assert end > start + 0.3
    assert end > 0.95 * math.log(3)


# -- progressive masking -----------------------------------------------------------------------


def test_linear_and_cosine_schedules_run_from_start_to_end_monotonically():
    for kind in ("linear", "cosine"):
        s = MaskSchedule(p_start=0.1, p_end=0.6, kind=kind)
        assert s.probability(0.0) == pytest.approx(0.1)
        assert s.probability(1.0) == pytest.approx(0.6)
        assert s.probability(0.5) == pytest.approx(0.35)
        values = [s.probability(t) for t in np.linspace(0, 1, 101)]
        assert all(b >= a for a, b in zip(values, values[1:]))
        assert s.probability(-0.5) == pytest.approx(0.1)
        assert s.probability(1.7) == pytest.approx(0.6)
    assert MaskSchedule(kind="linear").probability(0.25) == pytest.approx(0.225)
    assert MaskSchedule(kind="cosine").probability(0.25) < 0.225  # slow start


def test_step_schedule_has_equal_plateaus():
    s = MaskSchedule(p_start=0.0, p_end=0.6, kind="step", steps=4)
    assert [s.probability(t) for t in (0.0, 0.2, 0.25, 0.49, 0.5, 0.74, 0.75, 0.99, 1.0)] == \
        pytest.approx([0.0, 0.0, 0.2, 0.2, 0.4, 0.4, 0.6, 0.6, 0.6])


def test_schedule_validation_and_round_trip():
    s = MaskSchedule(p_start=0.2, p_end=0.5, kind="step", steps=3)
    assert MaskSchedule.from_dict(s.to_dict()) == s
    with pytest.raises(ValueError) as info:
        MaskSchedule(p_start=-0.1, p_end=1.5, kind="exp", steps=1)
    msg = str(info.value)
    assert all(k in msg for k in ("p_start", "p_end", "kind", "steps"))
    with pytest.raises(ValueError, match="progress"):
        MaskSchedule().probability(float("nan"))


def test_training_mask_never_hides_absent_or_all_present():
    g = torch.Generator().manual_seed(0)
    for p in (0.0, 0.3, 0.7, 1.0):
        present = torch.rand(4000, 4, generator=g) < 0.6
        masked = sample_training_mask(present, p, generator=g)
        assert masked.dtype == torch.bool and masked.shape == present.shape
        assert not (masked & ~present).any()
        has = present.any(1)
        assert (present & ~masked)[has].any(1).all()
        if p == 0.0:
            assert not masked.any()
    # with p = 1 exactly one present modality survives, chosen among the present ones
    present = torch.ones(3000, 3, dtype=torch.bool)
    kept = present & ~sample_training_mask(present, 1.0, generator=g)
    assert torch.all(kept.sum(1) == 1)
    counts = kept.sum(0).float() / 3000
    assert torch.all((counts - 1 / 3).abs() < 0.05)


def test_training_mask_rate_is_close_to_p_with_many_modalities():
    g = torch.Generator().manual_seed(1)
    present = torch.ones(3000, 16, dtype=torch.bool)
    for p in (0.1, 0.4):
        rate = sample_training_mask(present, p, generator=g).float().mean().item()
        assert rate == pytest.approx(p - p**16 / 16, abs=0.01)
    with pytest.raises(ValueError):
        sample_training_mask(present, 1.5)


# -- end to end --------------------------------------------------------------------------------


def test_training_a_tiny_model_reduces_the_loss():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    N, k = 512, 3
    mix = [torch.randn(k, d, generator=g) for d in DIMS]
    shared = torch.randn(N, k, generator=g)
    # correlated modalities with their own offsets and scales, so the normalisation matters
    data = [5.0 + 3.0 * (shared @ w) + 0.05 * torch.randn(N, w.shape[1], generator=g) for w in mix]
    model = DynamicFusion(tiny_config(latent_dim=16, decoder_hidden=32, dropout=0.0))
    model.set_normalization({n: (x.mean(0).numpy(), x.std(0).numpy()) for n, x in zip(MODS, data)})
    present_all = torch.rand(N, 3, generator=g) < 0.85
    schedule = MaskSchedule(p_start=0.2, p_end=0.5)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    history, steps, batch = [], 120, 64
    for step in range(steps):
        idx = torch.randint(0, N, (batch,), generator=g)
        present = present_all[idx]
        masked = sample_training_mask(present, schedule.probability(step / steps), generator=g)
        out = model([x[idx] for x in data], present, masked)
        losses = fusion_losses(model.config, out)
        opt.zero_grad()
        losses["total"].backward()
        opt.step()
        history.append({k: v.item() for k, v in losses.items()})
    first = np.mean([h["reconstruction"] for h in history[:15]])
    last = np.mean([h["reconstruction"] for h in history[-15:]])
    assert last < 0.4 * first, (first, last)
    totals = [h["total"] for h in history]
    assert np.mean(totals[-15:]) < np.mean(totals[:15])

    # a held-out modality is reconstructed much better than predicting its mean (error 1.0)
    present = torch.ones(N, 3, dtype=torch.bool)
    present[:, 2] = False
    out = model.embed([data[0], data[1], None], present)
    target = (data[2] - data[2].mean(0)) / data[2].std(0)
    assert F.mse_loss(out.reconstructions[2], target).item() < 0.3
