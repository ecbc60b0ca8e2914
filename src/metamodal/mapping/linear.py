"""Closed-form linear maps between two embedding spaces, in plain torch: ridge regression and
canonical correlation analysis (CCA). They are the baselines a learned alignment must beat."""

from __future__ import annotations

import torch
from torch import Tensor


def ridge_map(x: Tensor, y: Tensor, alpha: float = 1.0) -> tuple[Tensor, Tensor]:
    """Least squares ``W, b`` with ``x @ W + b ~ y`` and an L2 penalty ``alpha * |W|^2``.

    Args:
        x: ``[N, Dx]`` source embeddings.
        y: ``[N, Dy]`` target embeddings of the same samples.
        alpha: ridge penalty (> 0 keeps the solve well posed).

    Returns:
        ``W`` ``[Dx, Dy]`` and ``b`` ``[Dy]``.

    Example:
        >>> x = torch.randn(50, 3, dtype=torch.float64)
        >>> w, b = ridge_map(x, x @ torch.eye(3, dtype=torch.float64) + 1, alpha=1e-6)
        >>> torch.allclose(w, torch.eye(3, dtype=torch.float64), atol=1e-4)
        True
    """
    x64, y64 = x.double(), y.double()
    mx, my = x64.mean(0), y64.mean(0)
    xc, yc = x64 - mx, y64 - my
    gram = xc.T @ xc + alpha * torch.eye(x.shape[1], dtype=torch.float64, device=x.device)
    w = torch.linalg.solve(gram, xc.T @ yc)
    b = my - mx @ w
    return w.to(x.dtype), b.to(x.dtype)


def _inverse_sqrt(c: Tensor) -> Tensor:
    values, vectors = torch.linalg.eigh(c)
    return vectors @ torch.diag(values.clamp_min(1e-8).rsqrt()) @ vectors.T


def cca(x: Tensor, y: Tensor, k: int | None = None, reg: float = 1e-3
        ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Regularised canonical correlation analysis (Hotelling, 1936, "Relations between two sets
    of variates"): projections ``A``, ``B`` such that ``(x - mx) @ A`` and ``(y - my) @ B`` are
    maximally correlated, dimension by dimension.

    Args:
        x: ``[N, Dx]`` embeddings of modality X.
        y: ``[N, Dy]`` embeddings of modality Y of the same samples.
        k: canonical dimensions kept (default ``min(Dx, Dy)``).
        reg: ridge added to each covariance, relative to its mean variance.

    Returns:
        ``A`` ``[Dx, k]``, ``B`` ``[Dy, k]``, ``mx`` ``[Dx]``, ``my`` ``[Dy]`` and the canonical
        correlations ``[k]`` (descending).

    Example:
        >>> x = torch.randn(200, 4, dtype=torch.float64)
        >>> *_, rho = cca(x, x @ torch.randn(4, 4, dtype=torch.float64), k=2)
        >>> bool(rho[0] > 0.99)
        True
    """
    x64, y64 = x.double(), y.double()
    mx, my = x64.mean(0), y64.mean(0)
    xc, yc = x64 - mx, y64 - my
    n = max(1, x.shape[0] - 1)
    cxx, cyy, cxy = xc.T @ xc / n, yc.T @ yc / n, xc.T @ yc / n
    cxx = cxx + reg * cxx.diagonal().mean() * torch.eye(cxx.shape[0], dtype=torch.float64)
    cyy = cyy + reg * cyy.diagonal().mean() * torch.eye(cyy.shape[0], dtype=torch.float64)
    wx, wy = _inverse_sqrt(cxx), _inverse_sqrt(cyy)
    u, s, vh = torch.linalg.svd(wx @ cxy @ wy)
    k = k or min(x.shape[1], y.shape[1])
    a, b = wx @ u[:, :k], wy @ vh.T[:, :k]
    return a.to(x.dtype), b.to(x.dtype), mx.to(x.dtype), my.to(x.dtype), s[:k].to(x.dtype)
