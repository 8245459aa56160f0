"""The flow model: mixture density, Jacobian, invertibility, gradients, reproducible init."""

from __future__ import annotations

import math

import pytest
import torch

from dlsa_cli.flow.model import MixtureFlow, mixture_component_log_density


def _trained_flow(dim: int, k: int, *, blocks: int = 2, made_blocks: int = 1, seed: int = 0) -> MixtureFlow:
    """A flow moved away from its initial state (a few SGD steps) so every term is non-trivial."""
    g = torch.Generator().manual_seed(seed)
    flow = MixtureFlow(dim, k, hidden=2 * dim + 1, blocks=blocks, made_blocks=made_blocks, center_std=0.5, generator=g).double()
    opt = torch.optim.SGD(flow.parameters(), lr=0.05)
    x = torch.randn(64, dim, generator=g, dtype=torch.float64) * 2 + 1
    flow.train()
    for _ in range(5):
        logp, _, _ = flow.log_prob(x)
        loss = -logp.mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    flow.eval()
    return flow


def test_mixture_log_density_equals_per_component_brute_force():
    g = torch.Generator().manual_seed(1)
    z = torch.randn(7, 5, generator=g, dtype=torch.float64) * 3
    means = torch.randn(4, 5, generator=g, dtype=torch.float64)
    got = mixture_component_log_density(z, means)  # (7, 4)
    assert got.shape == (7, 4)
    for b in range(7):
        for k in range(4):
            want = sum(-0.5 * (float(z[b, j]) - float(means[k, j])) ** 2 - 0.5 * math.log(2 * math.pi) for j in range(5))
            assert abs(float(got[b, k]) - want) < 1e-10


def test_log_prob_is_mixture_of_unit_gaussians_plus_logdet():
    flow = _trained_flow(4, 3)
    x = torch.randn(6, 4, dtype=torch.float64)
    logp, comp, z = flow.log_prob(x)
    _, logdet = flow(x)
    comps = torch.stack(
        [torch.distributions.MultivariateNormal(flow.means[k], torch.eye(4, dtype=torch.float64)).log_prob(z) for k in range(3)],
        dim=1,
    )
    assert torch.allclose(comp, comps, atol=1e-10)
    want = torch.logsumexp(comps, 1) - math.log(3) + logdet
    assert torch.allclose(logp, want, atol=1e-10)


@pytest.mark.parametrize("blocks,made_blocks", [(1, 0), (2, 1), (3, 1)])
def test_logdet_equals_autograd_jacobian(blocks, made_blocks):
    flow = _trained_flow(5, 3, blocks=blocks, made_blocks=made_blocks)
    x = torch.randn(3, 5, dtype=torch.float64)
    with torch.no_grad():
        _, logdet = flow(x)
    for i in range(3):
        jac = torch.autograd.functional.jacobian(lambda v: flow(v[None])[0][0], x[i])  # (D, D)
        sign, logabs = torch.linalg.slogdet(jac)
        assert sign != 0
        assert abs(logabs.item() - logdet[i].item()) < 1e-8


def test_inverse_recovers_input_in_eval_mode():
    flow = _trained_flow(6, 2)
    x = torch.randn(5, 6, dtype=torch.float64)
    z, logdet = flow(x)
    x_back, inv_logdet = flow.transform.inverse(z)
    assert torch.allclose(x_back, x, atol=1e-8)
    assert torch.allclose(inv_logdet, -logdet, atol=1e-8)


def test_every_parameter_gets_a_gradient_and_means_are_fixed():
    flow = MixtureFlow(6, 4, generator=torch.Generator().manual_seed(0))
    flow.train()
    logp, comp, _ = flow.log_prob(torch.randn(16, 6))
    (logp.mean() + torch.log_softmax(comp, 1).mean()).backward()
    for name, p in flow.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name
    assert "means" not in dict(flow.named_parameters())
    assert "means" in dict(flow.named_buffers())


def test_eval_scores_do_not_depend_on_batching_and_work_for_one_sample():
    flow = _trained_flow(5, 3)
    x = torch.randn(9, 5, dtype=torch.float64)
    with torch.no_grad():
        full, _, _ = flow.log_prob(x)
        ones = torch.cat([flow.log_prob(x[i : i + 1])[0] for i in range(9)])
    assert torch.isfinite(ones).all()
    assert torch.allclose(full, ones, atol=1e-10)


def test_seeded_init_is_reproducible_and_shapes_follow_options():
    a = MixtureFlow(8, 5, hidden=12, generator=torch.Generator().manual_seed(3))
    b = MixtureFlow(8, 5, hidden=12, generator=torch.Generator().manual_seed(3))
    c = MixtureFlow(8, 5, hidden=12, generator=torch.Generator().manual_seed(4))
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["means"], sc["means"])
    assert a.means.shape == (5, 8)
    assert abs(float(MixtureFlow(64, 400, center_std=0.05).means.std()) - 0.05) < 0.005
    first = a.transform._transforms[0].autoregressive_net.initial_layer.weight
    assert first.shape == (12, 8)


def test_saved_state_leaves_out_rebuilt_masks_and_round_trips():
    a = _trained_flow(5, 3)
    saved = a.state_dict_to_save()
    assert not any(k.endswith((".mask", ".degrees", "._permutation")) for k in saved)
    b = MixtureFlow(5, 3, hidden=11, center_std=0.5, generator=torch.Generator().manual_seed(9)).double()
    b.load_saved_state(saved)
    b.means.copy_(a.means)
    b.eval()
    x = torch.randn(4, 5, dtype=torch.float64)
    with torch.no_grad():
        assert torch.equal(a.log_prob(x)[0], b.log_prob(x)[0])
    with pytest.raises(KeyError):
        b.load_saved_state({k: v for k, v in saved.items() if "bias" not in k})
