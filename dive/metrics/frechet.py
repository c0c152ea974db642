"""Fréchet distance between two feature sets (mean and covariance each), real by construction;
see `dive.metrics.quality` for how the report uses it."""

from __future__ import annotations

import numpy as np


def feature_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean (dim,) and covariance (dim, dim) of (N, dim) features, float64 (unbiased, N - 1)."""
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"need at least 2 feature rows (N, dim) for a covariance; got shape {f.shape}")
    return f.mean(axis=0), np.atleast_2d(np.cov(f, rowvar=False))


def _clip_eigenvalues(w: np.ndarray) -> np.ndarray:
    """Eigenvalues of a PSD matrix with rounding noise (negative, or below n * eps * largest) set to 0."""
    tol = w.size * np.finfo(np.float64).eps * max(float(np.abs(w).max(initial=0.0)), 1e-300)
    return np.where(w > tol, w, 0.0)


def _psd_sqrt(s: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((s + s.T) / 2.0)
    return (v * np.sqrt(_clip_eigenvalues(w))) @ v.T


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray, *,
                     method: str = "eig", eps: float = 1e-6) -> float:
    """||mu1 - mu2||^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^1/2), the Fréchet distance of two Gaussians.

    ``method="eig"``: tr((S1 S2)^1/2) = sum of sqrt(eigenvalues of S1^1/2 S2 S1^1/2), a symmetric PSD
    matrix (real, stable; eigenvalues below rounding level, n * eps * largest, count as 0).
    ``method="sqrtm"``: ``scipy.linalg.sqrtm`` of S1 S2, retried with ``eps`` added to both diagonals
    when the result is not finite, imaginary part dropped when it is negligible (an error otherwise).
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    d = mu1.shape[0]
    if mu2.shape != (d,) or s1.shape != (d, d) or s2.shape != (d, d):
        raise ValueError(f"shapes differ: mu1 {mu1.shape}, sigma1 {s1.shape}, mu2 {mu2.shape}, sigma2 {s2.shape}")
    diff = mu1 - mu2
    if method == "eig":
        r = _psd_sqrt(s1)
        m = r @ s2 @ r
        tr_covmean = float(np.sqrt(_clip_eigenvalues(np.linalg.eigvalsh((m + m.T) / 2.0))).sum())
    elif method == "sqrtm":
        from scipy import linalg

        covmean = linalg.sqrtm(s1 @ s2)
        if not np.isfinite(covmean).all():
            offset = np.eye(d) * eps
            covmean = linalg.sqrtm((s1 + offset) @ (s2 + offset))
        if np.iscomplexobj(covmean):
            if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
                raise ValueError(f"sqrtm has a large imaginary component ({np.abs(covmean.imag).max():.3g})")
            covmean = covmean.real
        tr_covmean = float(np.trace(covmean))
    else:
        raise ValueError(f"method must be 'eig' or 'sqrtm'; got {method!r}")
    fd = float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * tr_covmean)
    return max(fd, 0.0)


def frechet_distance_features(a: np.ndarray, b: np.ndarray, **kwargs) -> float:
    """Fréchet distance between the Gaussians fitted to two feature sets (rows = samples)."""
    return frechet_distance(*feature_stats(a), *feature_stats(b), **kwargs)


def split_half_fd(features: np.ndarray, seed: int = 0) -> dict | None:
    """FD between two random halves of one set: the distance two samples of the SAME distribution get."""
    n = len(features)
    if n < 4:
        return None
    perm = np.random.default_rng(seed).permutation(n)
    a, b = features[perm[: n // 2]], features[perm[n // 2:]]
    return {"fd": frechet_distance_features(a, b), "sizes": [len(a), len(b)]}
