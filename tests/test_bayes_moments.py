"""The two corrected statements of docs/bayes.md, checked by exact enumeration through iwst_spike:
the IW-ST(p) variance is not monotone in p, and p=1 (AGR_0) is unbiased for one stochastic unit only."""

import math

import pytest

from bso_snn.bayes.moments import one_unit, two_units


def _Phi(z):
    return 0.5 * math.erfc(-z / math.sqrt(2))


def _hand_one_unit(u, S, p, dL):
    """Plain transcription: g(b) = phi(u/S)/S * ((1-p) + p/(2 P(b))) * L'(b)."""
    d = math.exp(-0.5 * (u / S) ** 2) / (math.sqrt(2 * math.pi) * S)
    P = {1: _Phi(u / S), 0: 1 - _Phi(u / S)}
    g = {b: d * ((1 - p) + p / (2 * max(P[b], 1e-3))) * dL(b) for b in (0, 1)}
    mean = sum(P[b] * g[b] for b in (0, 1))
    return mean, sum(P[b] * g[b] ** 2 for b in (0, 1)) - mean**2


def cubic(b):
    return b**3


def d_cubic(b):
    return 3 * b**2


@pytest.mark.parametrize("u", [-1.5, 0.0, 0.5, 1.2])
@pytest.mark.parametrize("p", [0.0, 0.3, 1.0])
def test_enumerated_moments_match_the_hand_formula(u, p):
    m = one_unit(u, 0.8, p, cubic, d_cubic)
    mean, var = _hand_one_unit(u, 0.8, p, d_cubic)
    assert m.mean == pytest.approx(mean, rel=1e-9) and m.variance == pytest.approx(var, rel=1e-9, abs=1e-15)


def test_variance_is_not_monotone_in_p():
    ps = [0.0, 0.25, 0.5, 0.75, 1.0]
    rare = [one_unit(-1.5, 0.8, p, cubic, d_cubic).variance for p in ps]  # P(b=1) = 0.03
    likely = [one_unit(0.5, 0.8, p, cubic, d_cubic).variance for p in ps]  # P(b=1) = 0.73
    assert all(a < b for a, b in zip(rare, rare[1:], strict=False)) and rare[-1] > 100 * rare[0]
    assert all(a > b for a, b in zip(likely, likely[1:], strict=False)) and likely[-1] < 0.5 * likely[0]
    # and within one unit, an interior minimum: L(b) = -0.5 b - 0.75 b^2 at u = 1
    v = [
        one_unit(1.0, 0.8, p, lambda b: -0.5 * b - 0.75 * b * b, lambda b: -0.5 - 1.5 * b).variance
        for p in (0, 0.5, 1)
    ]
    assert v[1] < 0.05 * min(v[0], v[2])


def test_p1_is_unbiased_for_one_unit_with_a_quadratic_loss_but_not_for_two():
    def quad(b):
        return (b - 0.2) ** 2 + 0.5 * b

    def d_quad(b):
        return 2 * (b - 0.2) + 0.5

    for u in (-1.0, 0.3, 1.1):
        assert abs(one_unit(u, 0.8, 1.0, quad, d_quad).bias) < 1e-12
        assert abs(one_unit(u, 0.8, 0.0, quad, d_quad).bias) > 0.01
    two = [two_units(0.2, 0.8, 1.5, -0.7, 0.5, p, quad, d_quad) for p in (0.0, 1.0)]
    assert abs(two[1].bias) > 0.1 * abs(two[1].true)  # AGR_0 through two stochastic layers: biased

    def expected_loss(u1):  # E[L(b2)] by enumeration, to check the "true" gradient independently
        P1 = _Phi(u1 / 0.8)
        return sum(
            (P1 if b1 else 1 - P1)
            * (_Phi((1.5 * b1 - 0.7) / 0.5) * quad(1) + (1 - _Phi((1.5 * b1 - 0.7) / 0.5)) * quad(0))
            for b1 in (0, 1)
        )

    h = 1e-5
    assert two[1].true == pytest.approx((expected_loss(0.2 + h) - expected_loss(0.2 - h)) / (2 * h), rel=1e-6)
