"""The small exact solvers the gradient methods share, on a K x K Gram matrix (float64, CPU).

K is the number of tasks (2 to about 10), so every problem here is tiny; each is solved exactly
(an active-set NNLS, Newton to machine precision) rather than with an iterative tolerance, so that
a method's weights do not depend on a stopping rule.
"""
from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import brentq, nnls


def check_finite(gram: torch.Tensor, method: str) -> None:
    """A clear stop instead of a solver's own error when a task gradient overflowed (the losses
    themselves are checked by the trainer)."""
    if not torch.isfinite(gram).all():
        raise FloatingPointError(f"gradient_method={method}: the task gradients are not finite (an "
                                 "overflow in the backward pass); lower the learning rate or keep grad_clip on")


def gram_factor(gram: torch.Tensor) -> np.ndarray:
    """R (K, K) with R^T R = gram: the task gradients written in a K-dimensional basis of their
    span, so that any problem on the vectors becomes one on K numbers each. Tiny negative
    eigenvalues (rounding in the Gram matrix) are taken as 0."""
    lam, V = np.linalg.eigh(_sym(gram))
    return np.sqrt(np.clip(lam, 0.0, None))[:, None] * V.T


def min_norm_weights(gram: torch.Tensor) -> torch.Tensor:
    """w on the simplex minimising ||sum_k w_k g_k||: the min-norm point of the convex hull.

    With u = t w (t >= 0, w on the simplex), ||sum u_k g_k||^2 + (sum u - 1)^2
    = t^2 ||g_w||^2 + (t - 1)^2, whose minimum over t, ||g_w||^2 / (1 + ||g_w||^2), grows with
    ||g_w||: so the non-negative least squares min_{u >= 0} ||[R; 1^T] u - e||, solved exactly by
    Lawson-Hanson's active set, gives the min-norm point as w = u / sum(u).
    """
    R = gram_factor(gram)
    K = R.shape[1]
    A = np.vstack([R, np.ones((1, K))])
    b = np.zeros(K + 1)
    b[-1] = 1.0
    u, _ = nnls(A, b, maxiter=50 * K)
    return torch.from_numpy(u / u.sum())


def shifted_gram(gram: torch.Tensor, shift: torch.Tensor, t: float) -> torch.Tensor:
    """The Gram matrix of the vectors g_k + t * (sum_m shift_m g_m)."""
    s = gram @ shift
    return gram + t * (s[:, None] + s[None, :]) + t * t * (shift @ s)


def lower_bound_projection(gram_pd: np.ndarray, u: np.ndarray) -> np.ndarray:
    """v minimising v^T G v subject to v >= u, for a positive definite G: with G = L L^T and
    v = u + x, this is min_{x >= 0} ||L^T x + L^T u||, an exact NNLS."""
    L = np.linalg.cholesky(gram_pd)
    x, _ = nnls(L.T, -(L.T @ u), maxiter=50 * len(u))
    return u + x


def nash_weights(gram: torch.Tensor, max_iter: int = 200) -> torch.Tensor | None:
    """The a > 0 with G a = 1 / a elementwise (the Nash bargaining solution of Navon et al. 2022),
    i.e. the minimiser of the strictly convex f(a) = a^T G a / 2 - sum_k log a_k, by damped Newton.
    f is self-concordant, so once the Newton decrement is below 1/4 full steps stay in a > 0 and
    converge quadratically: they run until the decrement stops falling (machine precision).
    None when f has no minimiser (unbounded below: linearly dependent, opposed gradients)."""
    G = _sym(gram)
    d = np.sqrt(np.clip(np.diag(G), 1e-300, None))
    a = 1.0 / d  # the solution when the gradients are orthogonal
    f = lambda a: 0.5 * a @ G @ a - np.log(a).sum()
    last = np.inf
    for _ in range(max_iter):
        grad = G @ a - 1.0 / a
        try:
            step = np.linalg.solve(G + np.diag(1.0 / (a * a)), grad)
        except np.linalg.LinAlgError:  # a has run off to where 1/a^2 is lost next to G
            return None
        decrement = float(grad @ step)  # squared: f - min f is about decrement / 2
        if not np.isfinite(decrement):
            return None
        if decrement < 0.0625:
            if decrement >= last or decrement == 0:  # rounding level reached
                return torch.from_numpy(a)
            a, last = a - step, decrement
            continue
        s, fa = 1.0, f(a)
        while not ((a - s * step > 0).all() and f(a - s * step) <= fa - 0.25 * s * decrement):
            s *= 0.5
            if s < 1e-20:
                return None
        a = a - s * step
    return None


def cagrad_weights(gram: torch.Tensor, c: float, stop: float) -> torch.Tensor:
    """CAGrad (Liu et al. 2021) on a trace-normalised Gram matrix G: the weights w0 + (r / ||g_w||) w
    with w0 = 1/K, r = c ||g_0|| (g_0 the mean gradient) and w the minimiser on the simplex of
    F(w) = g_w . g_0 + r ||g_w||; zeros when ||g_w|| < stop (a Pareto-stationary point).

    F's minimiser is found through the ball constraint's multiplier lam = ||g_w|| / r: for a fixed
    lam, min_w g_w . g_0 + ||g_w||^2 / (2 lam) is the min-norm point of the shifted vectors
    g_k + lam g_0 (an exact NNLS); ||g_w(lam)|| / lam - r falls from +inf to -r as lam grows, and
    at its root (Brent's method to machine precision) w is F's stationary point.
    """
    K = gram.size(0)
    w0 = torch.full((K,), 1.0 / K, dtype=torch.float64)
    r = c * _norm(gram, w0)
    if r == 0:  # c = 0 (or no gradient at all): plain gradient descent on the mean loss
        return w0

    def psi(t):
        w = min_norm_weights(shifted_gram(gram, w0, float(np.exp(t))))
        return _norm(gram, w) / np.exp(t) - r

    # lam is searched on a log scale from the gradients' own scale, ||g_w|| <= max ||g_k||
    hi = float(np.log(max(float(gram.diagonal().max()), 1e-300) ** 0.5 / r))
    while psi(hi) > 0:
        hi += 2.0
    lo = hi - 2.0
    while psi(lo) < 0:
        lo -= 2.0
        if lo < hi - 80:  # ||g_w|| -> 0 faster than lam: F is least at g_w = 0
            return torch.zeros(K, dtype=torch.float64)
    t = brentq(psi, lo, hi, xtol=1e-14, rtol=4 * np.finfo(float).eps, maxiter=500)
    w = min_norm_weights(shifted_gram(gram, w0, float(np.exp(t))))
    q = _norm(gram, w)
    if q < stop:
        return torch.zeros(K, dtype=torch.float64)
    return w0 + (r / q) * w


def _norm(gram: torch.Tensor, w: torch.Tensor) -> float:
    """||sum_k w_k g_k||."""
    return max(float(w @ gram @ w), 0.0) ** 0.5


def trace_normalise(gram: torch.Tensor, eps: float) -> torch.Tensor:
    """gram / trace(gram) (the Gram matrix of the gradients scaled to unit total squared norm);
    zeros when the trace is below eps."""
    tr = float(gram.diagonal().sum())
    return torch.zeros_like(gram) if tr < eps or tr == 0 else gram / tr


def _sym(gram: torch.Tensor) -> np.ndarray:
    G = gram.detach().double().cpu().numpy()
    return (G + G.T) / 2
