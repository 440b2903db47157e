"""musiccore.eval.frechet against the closed form for Gaussians with diagonal covariances."""

import numpy as np
import pytest

from musiccore.eval.frechet import embedding_stats, frechet_distance, frechet_distance_from_stats


def diag_closed_form(mu1, var1, mu2, var2):
    """For diagonal covariances the matrix square root is elementwise: sum (s1 + s2 - 2 sqrt(s1 s2))."""
    return float(np.sum((mu1 - mu2) ** 2) + np.sum(var1 + var2 - 2 * np.sqrt(var1 * var2)))


def test_stats_form_matches_diagonal_closed_form():
    r = np.random.default_rng(0)
    mu1, mu2 = r.standard_normal(8), r.standard_normal(8)
    var1, var2 = r.uniform(0.2, 3, 8), r.uniform(0.2, 3, 8)
    got = frechet_distance_from_stats(mu1, np.diag(var1), mu2, np.diag(var2))
    assert got == pytest.approx(diag_closed_form(mu1, var1, mu2, var2), rel=1e-9, abs=1e-9)
    # Zero between identical Gaussians, symmetric, and |mu1 - mu2|^2 when only the means differ.
    assert frechet_distance_from_stats(mu1, np.diag(var1), mu1, np.diag(var1)) == pytest.approx(0.0, abs=1e-9)
    assert frechet_distance_from_stats(mu2, np.diag(var2), mu1, np.diag(var1)) == pytest.approx(got)
    assert frechet_distance_from_stats(mu1, np.eye(8), mu2, np.eye(8)) == pytest.approx(np.sum((mu1 - mu2) ** 2))


def test_full_covariance_is_rotation_invariant():
    # Rotating both Gaussians by the same orthogonal matrix keeps the distance: checks the non-diagonal path.
    r = np.random.default_rng(1)
    mu1, mu2 = r.standard_normal(6), r.standard_normal(6)
    var1, var2 = r.uniform(0.5, 2, 6), r.uniform(0.5, 2, 6)
    q, _ = np.linalg.qr(r.standard_normal((6, 6)))
    got = frechet_distance_from_stats(q @ mu1, q @ np.diag(var1) @ q.T, q @ mu2, q @ np.diag(var2) @ q.T)
    assert got == pytest.approx(diag_closed_form(mu1, var1, mu2, var2), rel=1e-6)


def test_samples_converge_to_closed_form():
    r = np.random.default_rng(2)
    mu1, mu2 = np.zeros(4), np.array([1.0, 0.0, -0.5, 2.0])
    sd1, sd2 = np.array([1.0, 2.0, 0.5, 1.0]), np.array([1.5, 1.0, 0.5, 0.7])
    x = mu1 + sd1 * r.standard_normal((20000, 4))
    y = mu2 + sd2 * r.standard_normal((20000, 4))
    expected = diag_closed_form(mu1, sd1**2, mu2, sd2**2)
    assert frechet_distance(x, y) == pytest.approx(expected, rel=0.03)
    mu, sigma = embedding_stats(x)
    np.testing.assert_allclose(mu, x.mean(0))
    np.testing.assert_allclose(sigma, np.cov(x, rowvar=False))


def test_singular_covariances_with_few_samples():
    # Fewer samples than dimensions: covariances are singular, the eps offset keeps the result finite and >= 0.
    r = np.random.default_rng(3)
    x, y = r.standard_normal((5, 16)), r.standard_normal((5, 16)) + 3
    d = frechet_distance(x, y)
    assert np.isfinite(d) and d > 16 * 9 * 0.5
    assert frechet_distance(x, x) == pytest.approx(0.0, abs=1e-3)


def test_bad_inputs():
    r = np.random.default_rng(4)
    with pytest.raises(ValueError, match="at least 2"):
        frechet_distance(r.standard_normal((1, 3)), r.standard_normal((5, 3)))
    with pytest.raises(ValueError, match="dimensions differ"):
        frechet_distance(r.standard_normal((5, 3)), r.standard_normal((5, 4)))
    with pytest.raises(ValueError, match=r"\[N, D\]"):
        frechet_distance(r.standard_normal(5), r.standard_normal(5))
    x = r.standard_normal((5, 3))
    x[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        frechet_distance(x, r.standard_normal((5, 3)))
    with pytest.raises(ValueError, match="shape mismatch"):
        frechet_distance_from_stats(np.zeros(3), np.eye(3), np.zeros(3), np.eye(4))
