"""The seven Gram-matrix gradient methods (GradVac, CAGrad, IMTL-G, MGDA, Nash-MTL, Aligned-MTL,
UPGrad): hand-worked cases, torchjd as the reference implementation, each method's defining
invariant, and the whole path through `backward` on a small model."""
import math
import warnings

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
# the reference implementation (requirements-dev.txt): a missing one fails rather than skips
from torchjd.aggregation import (AlignedMTLWeighting, CAGradWeighting, GradVacWeighting, IMTLGWeighting,
                                 MGDAWeighting, NashMTL, UPGradWeighting)

from mtbert.config import TrainConfig
from mtbert.methods import GRADIENT_METHODS, make_method

NAMES = [cls.name for cls in GRADIENT_METHODS]
P0 = [nn.Parameter(torch.zeros(1))]  # coefficients() reads the Gram matrix only


def method(name, **hyper):
    return make_method(name, P0, **hyper)


def weights(name, G, **hyper):
    """(λ, number of projections) of a fresh method on the gradients G (K, P)."""
    return method(name, **hyper).coefficients(G @ G.T, None)


def T(*rows):
    return torch.tensor(rows, dtype=torch.float64)


def random_grads(K, seed, P=20):
    return torch.randn(K, P, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def close(a, b, atol):
    return torch.allclose(torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64),
                          atol=atol, rtol=0)


def test_all_seven_are_registered_with_their_settings():
    assert NAMES == ["gradvac", "cagrad", "imtlg", "mgda", "nashmtl", "alignedmtl", "upgrad"]
    cfg = TrainConfig()
    assert (cfg.gradvac_beta, cfg.cagrad_c, cfg.nashmtl_max_norm, cfg.upgrad_norm_eps, cfg.upgrad_reg_eps) == (
        0.01, 0.5, 1.0, 1e-4, 1e-4)
    for cls in GRADIENT_METHODS:
        assert cls.summary and "20" in cls.summary  # one line, with the paper's year


# ---- hand-worked cases --------------------------------------------------------------------------

def test_mgda_hand_worked():
    # orthogonal g1 = (1,0), g2 = (0,1): the closest point of the segment to 0 is its middle
    w, _ = weights("mgda", T([1, 0], [0, 1]))
    assert close(w, [0.5, 0.5], 1e-12)
    # g1 = (1,0), g2 = (1,1): the segment's closest point is its end g1
    w, _ = weights("mgda", T([1, 0], [1, 1]))
    assert close(w, [1, 0], 1e-12)
    # orthogonal, norms 1, 2, 2: w_k ∝ 1/||g_k||^2 = (1, 1/4, 1/4) / 1.5, the point (2/3, 1/3, 1/3)
    w, _ = weights("mgda", T([1, 0, 0], [0, 2, 0], [0, 0, 2]))
    assert close(w, [2 / 3, 1 / 6, 1 / 6], 1e-12)


def test_imtlg_hand_worked():
    # G = diag(1, 4), d = (1, 2): G^-1 d = (1, 1/2), normalised (2/3, 1/3); the update (2/3, 2/3)
    # projects to 2/3 on both unit gradients (1,0) and (0,1)
    G = T([1, 0], [0, 2])
    w, _ = weights("imtlg", G)
    assert close(w, [2 / 3, 1 / 3], 1e-12) and close(w @ G, [2 / 3, 2 / 3], 1e-12)


def test_upgrad_hand_worked():
    # g1 = (1,0), g2 = (-1,1): G = [[1,-1],[-1,2]] (the trace scaling does not move the projection;
    # a tiny ridge). Projecting u = (1/2, 0): v1 = 1/2 is active, min over v2 of
    # v1^2 - 2 v1 v2 + 2 v2^2 gives v2 = v1/2 = 1/4. Projecting u = (0, 1/2): v2 = 1/2 active,
    # 2 v1 - 2 v2 = 0 gives v1 = 1/2. λ = (1/2 + 1/2, 1/4 + 1/2) = (1, 3/4): update (1/4, 3/4).
    G = T([1, 0], [-1, 1])
    w, n = weights("upgrad", G, reg_eps=1e-12)
    assert close(w, [1, 0.75], 1e-9) and close(w @ G, [0.25, 0.75], 1e-9) and n == 2
    # orthogonal gradients are in each other's dual cone: nothing projected, the mean
    w, n = weights("upgrad", T([1, 0], [0, 3]))
    assert close(w, [0.5, 0.5], 1e-15) and n == 0


def test_cagrad_hand_worked():
    # orthogonal unit g1, g2: by symmetry w = (1/2, 1/2), so g_w = g_0 and
    # λ = 1/2 + (c ||g_0|| / ||g_0||) 1/2 = (1 + c)/2 each: the update (1 + c) g_0
    G = T([1, 0], [0, 1])
    for c in (0.0, 0.5, 2.0):
        w, _ = weights("cagrad", G, c=c)
        assert close(w, [(1 + c) / 2] * 2, 1e-9)
    # c = 0 is the mean gradient, whatever the gradients
    assert close(weights("cagrad", random_grads(3, 0), c=0.0)[0], [1 / 3] * 3, 0)


def test_nashmtl_hand_worked():
    # orthogonal g1 = (1,0), g2 = (0,2): G = diag(1,4), ||G||_F = sqrt(17); G/sqrt(17) a = 1/a gives
    # a_k = 17^(1/4) / ||g_k|| = 17^(1/4) (1, 1/2). The update's norm 17^(1/4) sqrt(2) ~ 2.87 > 1 is
    # scaled to max_norm = 1: a = (1, 1/2) / sqrt(2).
    G = T([1, 0], [0, 2])
    a, _ = weights("nashmtl", G, max_norm=0.0)
    assert close(a, [17 ** 0.25, 17 ** 0.25 / 2], 1e-12)
    a, _ = weights("nashmtl", G)
    assert close(a, [2 ** -0.5, 2 ** -1.5], 1e-12) and math.isclose(float((a @ G).norm()), 1.0)


def test_alignedmtl_hand_worked():
    # G = diag(1, 4): eigenvalues 4, 1, λ_min = 1, B = diag(1, 1/2): λ = B (1/2, 1/2) = (1/2, 1/4).
    # The aligned gradients (1,0), (0,1) have the smallest singular value's norm; their mean (1/2, 1/2).
    G = T([1, 0], [0, 2])
    w, _ = weights("alignedmtl", G)
    assert close(w, [0.5, 0.25], 1e-12) and close(w @ G, [0.5, 0.5], 1e-12)


def test_gradvac_hand_worked():
    # phi-hat starts at 0, so the first step projects like PCGrad (up to the 1e-8 in denominators):
    # g1 = (1,0), g2 = (-1,1), g1.g2 = -1: g1' = g1 + g2/2, g2' = g2 + g1: λ = (2, 3/2), update (1/2, 3/2)
    G = T([1, 0], [-1, 1])
    m = method("gradvac", beta=0.5)
    w, n = m.coefficients(G @ G.T, None)
    assert close(w, [2, 1.5], 1e-7) and close(w @ G, [0.5, 1.5], 1e-7) and n == 2
    # both targets became 0.5 cos(g1, g2) = -1/(2 sqrt 2); the same gradients again are corrected up
    # to exactly that cosine: g1' = g1 + (λ2 - 1) g2, g2' = g2 + (λ1 - 1) g1
    target = -0.5 / math.sqrt(2)
    assert close(m.phi_hat, [[0, target], [target, 0]], 1e-8)
    w, n = m.coefficients(G @ G.T, None)
    g1, g2 = G[0] + (w[1] - 1) * G[1], G[1] + (w[0] - 1) * G[0]
    assert n == 2
    assert math.isclose(float(F.cosine_similarity(g1, G[1], dim=0)), target, abs_tol=1e-7)
    assert math.isclose(float(F.cosine_similarity(g2, G[0], dim=0)), target, abs_tol=1e-7)


# ---- torchjd, the reference implementation ------------------------------------------------------

def tight_clarabel(monkeypatch):
    """torchjd's CAGrad calls cvxpy's CLARABEL with its default tolerances (1e-8 on the gap), which
    leaves its weights up to ~6e-5 off the optimum on these cases (ours satisfy the KKT conditions
    to rounding, with an objective never above torchjd's); the same program solved to 1e-12 agrees."""
    import cvxpy as cp
    solve = cp.Problem.solve

    def tight(self, *args, **kwargs):
        if (args[:1] or [kwargs.get("solver")])[0] == cp.CLARABEL:
            kwargs.update(tol_gap_abs=1e-12, tol_gap_rel=1e-12, tol_feas=1e-12, tol_ktratio=1e-10)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return solve(self, *args, **kwargs)

    monkeypatch.setattr(cp.Problem, "solve", tight)


@pytest.mark.parametrize("K", [2, 3, 5])
@pytest.mark.parametrize("name", [n for n in NAMES if n != "mgda"])  # MGDA: the next test
def test_against_torchjd(name, K, monkeypatch):
    """Weights and aggregated vector to 1e-5 against torchjd 0.18's weighting with the same
    hyperparameters, on seeded random (K, 20) gradients, three draws each. torchjd's iterative
    solvers are run to convergence: CAGrad's CLARABEL to 1e-12 (see tight_clarabel); Nash-MTL's own sequence of ECOS programs at its
    defaults already agrees to ~1e-9. GradVac draws its orders from the global generator: seeded
    with our seed, it draws the same ones."""
    if name == "cagrad":
        tight_clarabel(monkeypatch)
    for draw in range(3):
        G = random_grads(K, 100 * K + draw)
        gram = G @ G.T
        if name == "gradvac":
            ours, ref = method(name, beta=0.3), GradVacWeighting(beta=0.3)
            torch.manual_seed(0)  # make_method's default seed
            for step in range(3):  # the targets carry over
                Gs = G + 0.3 * step * random_grads(K, 7 + step)
                w, _ = ours.coefficients(Gs @ Gs.T, None)
                r = ref(Gs @ Gs.T)
                assert close(w, r, 1e-5) and close(w @ Gs, r @ Gs, 1e-5)
            continue
        if name == "nashmtl":
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # cvxpy's note that the program is not DPP
                ref = NashMTL(n_tasks=K).weighting(G)
            hyper = {}
        else:
            ref, hyper = {
                "cagrad": (CAGradWeighting(c=0.5), {"c": 0.5}),
                "imtlg": (IMTLGWeighting(), {}),
                "alignedmtl": (AlignedMTLWeighting(), {}),
                "upgrad": (UPGradWeighting(), {}),
            }[name]
            ref = ref(gram)
        w, _ = method(name, **hyper).coefficients(gram, None)
        assert close(w, ref, 1e-5), (w, ref)
        assert close(w @ G, ref @ G, 1e-5)


@pytest.mark.parametrize("K", [2, 3, 5])
def test_mgda_against_quadprog_and_torchjd(K):
    """torchjd's MGDA is the Frank-Wolfe iteration of Sener and Koltun, whose steps shrink like 1/t
    when the minimum lies on a face: at its defaults its weights are up to 0.04 off here, and even
    at epsilon 1e-12 and 1e5 iterations 4e-4. So the exact reference is quadprog (torchjd's own QP
    backend) on the same simplex QP, to 1e-7; torchjd's Frank-Wolfe points are never shorter than
    ours, and within 1% of its length."""
    from qpsolvers import solve_qp
    for draw in range(3):
        G = random_grads(K, 100 * K + draw)
        gram = G @ G.T
        w, _ = method("mgda").coefficients(gram, None)
        exact = solve_qp(*(np.asarray(x, dtype=np.float64) for x in (
            gram.numpy() + 1e-13 * np.eye(K), np.zeros(K))), A=np.ones((1, K)), b=np.ones(1), lb=np.zeros(K),
            solver="quadprog")
        assert close(w, exact, 1e-7) and close(w @ G, torch.from_numpy(exact) @ G, 1e-7)
        for fw in (MGDAWeighting(), MGDAWeighting(epsilon=1e-9, max_iters=10_000)):
            ours, theirs = float((w @ G).norm()), float((fw(gram) @ G).norm())
            assert ours <= theirs + 1e-12 and theirs <= ours * 1.01


def test_cagrad_other_radii_against_torchjd(monkeypatch):
    tight_clarabel(monkeypatch)
    for c in (0.1, 1.0, 3.0):
        G = random_grads(4, 11)
        w, _ = weights("cagrad", G, c=c)
        assert close(w, CAGradWeighting(c=c)(G @ G.T), 1e-5)


def test_cagrad_is_the_best_worst_case_in_the_ball():
    """The CAGrad update d maximises min_k g_k.d over ||d - g_0|| <= c ||g_0|| (in the trace-normalised
    scale): it lies on the sphere, and no sampled point of the ball does better."""
    for K in (2, 3, 5):
        G = random_grads(K, 40 + K)
        G = G / (G @ G.T).trace().sqrt()
        w, _ = weights("cagrad", G, c=0.5)
        d, g0 = w @ G, G.mean(0)
        r = 0.5 * g0.norm()
        assert math.isclose(float((d - g0).norm()), float(r), rel_tol=1e-9)
        best = float((G @ d).min())
        dirs = torch.randn(5000, G.size(1), generator=torch.Generator().manual_seed(K), dtype=torch.float64)
        cand = g0 + r * dirs / dirs.norm(dim=1, keepdim=True)
        assert float((cand @ G.T).min(dim=1).values.max()) <= best + 1e-12


# ---- invariants ---------------------------------------------------------------------------------

@pytest.mark.parametrize("K", [2, 3, 5, 8])
def test_mgda_is_the_min_norm_point(K):
    # KKT of min ||G^T w||^2 on the simplex: g_k . d >= ||d||^2 for every k, with equality where w_k > 0
    for draw in range(5):
        G = random_grads(K, draw, P=6)  # P close to K: the minimum is often on a face
        w, _ = weights("mgda", G)
        d = w @ G
        dots, sq = G @ d, d @ d
        assert (w >= 0).all() and math.isclose(float(w.sum()), 1.0, rel_tol=1e-12)
        assert (dots >= sq - 1e-10).all()
        assert torch.allclose(dots[w > 1e-9], sq.expand(int((w > 1e-9).sum())), atol=1e-10)


@pytest.mark.parametrize("K", [2, 3, 5, 8])
def test_upgrad_conflicts_with_no_task(K):
    # with the ridge r the projection is exact for G/tr + r I: g_k . d >= -r tr λ_k (and >= 0 for r -> 0)
    for draw in range(5):
        G = random_grads(K, 50 + draw, P=6)
        for reg in (1e-4, 1e-10):
            w, n = weights("upgrad", G, reg_eps=reg)
            tr = float((G * G).sum())
            assert (G @ (w @ G) >= -reg * tr * w - 1e-12).all() and (w >= 0).all()
        assert n >= 1 or ((G @ G.T) >= 0).all()


@pytest.mark.parametrize("K", [2, 3, 5])
def test_imtlg_equal_projections_on_unit_gradients(K):
    for draw in range(5):
        G = random_grads(K, 60 + draw)
        w, _ = weights("imtlg", G)
        proj = G @ (w @ G) / G.norm(dim=1)
        assert torch.allclose(proj, proj[0].expand(K), rtol=1e-10) and math.isclose(float(w.sum()), 1.0)


@pytest.mark.parametrize("K", [2, 3, 5])
def test_nashmtl_solves_the_bargaining_equation(K):
    # without the norm cap: (G/||G||_F) a = 1/a, a > 0
    for draw in range(5):
        G = random_grads(K, 70 + draw)
        a, _ = weights("nashmtl", G, max_norm=0.0)
        gram = G @ G.T
        assert (a > 0).all() and torch.allclose(gram / torch.linalg.matrix_norm(gram) @ a, 1 / a, rtol=1e-10)


@pytest.mark.parametrize("K", [2, 3, 5])
def test_alignedmtl_aligned_gradients_have_equal_singular_values(K):
    # the aligned gradients B G (B symmetric) have every singular value sqrt(λ_min), and λ = B 1/K
    for draw in range(5):
        G = random_grads(K, 80 + draw)
        w, _ = weights("alignedmtl", G)
        lam, V = torch.linalg.eigh(G @ G.T)
        B = lam[0].sqrt() * V @ torch.diag(lam.rsqrt()) @ V.T
        assert torch.allclose(torch.linalg.svdvals(B @ G), lam[0].sqrt().expand(K), rtol=1e-9)
        assert torch.allclose(w, B.sum(1) / K, atol=1e-12)


def test_orthogonal_gradients():
    # no conflict: PCGrad and GradVac's first step are the sum, UPGrad the mean, nothing projected
    G = T([2, 0, 0], [0, 1, 0], [0, 0, 3])
    for name, expected in (("pcgrad", None), ("gradvac", [1, 1, 1]), ("upgrad", [1 / 3] * 3)):
        w, n = weights(name, G)
        assert n == 0 and (w is None if expected is None else close(w, expected, 0))
    # MGDA: λ ∝ 1/||g_k||^2; IMTL-G: λ ∝ 1/||g_k||; Nash-MTL (no cap): a ∝ 1/||g_k||
    inv = torch.tensor([0.5, 1.0, 1 / 3], dtype=torch.float64)
    assert close(weights("mgda", G)[0], inv ** 2 / (inv ** 2).sum(), 1e-12)
    assert close(weights("imtlg", G)[0], inv / inv.sum(), 1e-12)
    a = weights("nashmtl", G, max_norm=0.0)[0]
    assert close(a / a.sum(), inv / inv.sum(), 1e-12)


DEGENERATE = [T([1, 0], [-1, 0]),  # directly opposed: Pareto-stationary
              T([1, 0], [-1, 0], [0, 1]),  # two opposed, one orthogonal
              T([1, 0], [2, 0])]  # linearly dependent, same direction


@pytest.mark.parametrize("G", DEGENERATE, ids=["opposed", "opposed+orthogonal", "parallel"])
def test_degenerate_gradients_against_torchjd(G, monkeypatch):
    """Linearly dependent gradients: finite weights, and the same update as torchjd (Nash-MTL has no
    bargaining solution for opposed gradients: ours adds a tiny ridge, torchjd keeps its start; both
    give the update 0 there)."""
    tight_clarabel(monkeypatch)
    gram = G @ G.T
    refs = {"cagrad": CAGradWeighting(c=0.5), "imtlg": IMTLGWeighting(), "alignedmtl": AlignedMTLWeighting(),
            "upgrad": UPGradWeighting()}
    for name, ref in refs.items():
        w, _ = method(name).coefficients(gram, None)
        assert torch.isfinite(w).all() and close(w @ G, ref(gram) @ G, 1e-6), name
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = NashMTL(n_tasks=len(G)).weighting(G)
    w, _ = method("nashmtl").coefficients(gram, None)
    assert torch.isfinite(w).all() and close(w @ G, ref @ G, 1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_zero_gradients_give_finite_weights(name):
    # a frozen encoder: nothing shared, the Gram matrix is all zeros
    for K in (1, 3):
        w, _ = method(name).coefficients(torch.zeros(K, K, dtype=torch.float64), None)
        assert w.shape == (K,) and torch.isfinite(w).all()


@pytest.mark.parametrize("name", NAMES)
def test_non_finite_gradients_stop_with_a_clear_message(name):
    gram = T([1, float("nan")], [float("nan"), 1])
    with pytest.raises(FloatingPointError, match=f"gradient_method={name}: the task gradients are not finite"):
        method(name).coefficients(gram, None)


# ---- through backward on a small model ----------------------------------------------------------

class Small(nn.Module):
    """trunk: all tasks; pair: para and sts only; one head per task. sts pulls against para."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.trunk = nn.Linear(4, 6).double()
        self.pair = nn.Linear(6, 5).double()
        self.heads = nn.ModuleDict({"sst": nn.Linear(6, 3).double(), "para": nn.Linear(5, 1).double(),
                                    "sts": nn.Linear(5, 1).double()})
        self.x = torch.randn(8, 4, dtype=torch.float64)
        self.y = torch.randint(0, 3, (8,))

    def losses(self, tasks=("sst", "para", "sts")):
        h = torch.tanh(self.trunk(self.x))
        z = torch.tanh(self.pair(h))
        out = {"sst": F.cross_entropy(self.heads["sst"](h), self.y),
               "para": self.heads["para"](z).pow(2).mean() + self.heads["para"](z).mean(),
               "sts": -2 * self.heads["sts"](z).mean() + 0.1 * self.heads["sts"](z).pow(2).mean()}
        return {t: out[t] for t in tasks}


SHARED = ("trunk.weight", "trunk.bias", "pair.weight", "pair.bias")


def per_task(model, tasks=("sst", "para", "sts")):
    """{task: {name: gradient}} from torch.autograd.grad, zeros where a task does not reach."""
    names, params = zip(*model.named_parameters())
    out = {}
    for t in tasks:
        gs = torch.autograd.grad(model.losses((t,))[t], params, allow_unused=True)
        out[t] = {n: torch.zeros_like(p) if g is None else g for n, p, g in zip(names, params, gs)}
    return out


@pytest.mark.parametrize("name", NAMES)
def test_backward_applies_the_weights(name):
    tasks = ("sst", "para", "sts")
    model, twin = Small(), make_method(name, P0)  # the twin replays coefficients() on our own Gram
    m = make_method(name, list(model.parameters()))
    for step in range(2):  # GradVac's targets carry over: the twin follows
        g = per_task(model)
        flat = torch.stack([torch.cat([g[t][n].reshape(-1) for n in SHARED]) for t in tasks])
        c, _ = twin.coefficients(flat @ flat.T, None)
        stats = m.backward(model.losses())
        assert close(list(stats["weights"].values()), c, 1e-9) and list(stats["weights"]) == list(tasks)
        for n, p in model.named_parameters():
            if n in SHARED:
                expected = sum(float(c[k]) * g[t][n] for k, t in enumerate(tasks))
            else:  # a head: its task's plain gradient
                expected = g[n.split(".")[1]][n]
            assert torch.allclose(p.grad, expected, atol=1e-10), (name, n)
        with torch.no_grad():
            for p in model.parameters():
                p -= 0.1 * p.grad


@pytest.mark.parametrize("name", NAMES)
def test_one_task_is_the_plain_gradient(name):
    model, ref = Small(), Small()
    make_method(name, list(model.parameters())).backward(model.losses(("sst",)))
    ref.losses(("sst",))["sst"].backward()
    for (n, p), q in zip(model.named_parameters(), ref.parameters()):
        assert (p.grad is None) == (q.grad is None) and (p.grad is None or torch.equal(p.grad, q.grad)), n


def test_gradvac_state_round_trip(tmp_path):
    """Saved after two steps (safetensors: tensors only) and loaded into a fresh method, GradVac takes
    the same next steps as the one that ran on: same targets, same orders."""
    model = Small()
    a = make_method("gradvac", list(model.parameters()), seed=4, beta=0.5)
    for _ in range(2):
        a.backward(model.losses())
    save_file(a.state_dict(), str(tmp_path / "state.safetensors"))
    b = make_method("gradvac", list(model.parameters()), seed=99, beta=0.5)
    b.load_state_dict(load_file(str(tmp_path / "state.safetensors")))
    for _ in range(3):
        sa = a.backward(model.losses())
        ga = [p.grad.clone() for p in model.parameters()]
        sb = b.backward(model.losses())
        assert sa["weights"] == sb["weights"] and sa["projections"] == sb["projections"]
        assert all(torch.equal(x, p.grad) for x, p in zip(ga, model.parameters()))
        with torch.no_grad():
            for p in model.parameters():
                p -= 0.05 * p.grad
    # a fresh method with another seed would not have: the orders or the targets differ
    c = make_method("gradvac", list(model.parameters()), seed=99, beta=0.5)
    assert not torch.equal(c.state_dict()["phi_hat"], a.state_dict()["phi_hat"])


# ---- settings -----------------------------------------------------------------------------------

@pytest.mark.parametrize("setting,value,allowed", [
    ("cagrad_c", -1, "a number, 0 <= cagrad_c"),
    ("gradvac_beta", 1.5, "a number, 0 <= gradvac_beta <= 1"),
    ("nashmtl_max_norm", -0.5, "a number, 0 <= nashmtl_max_norm"),
    ("upgrad_reg_eps", 0.0, "a number, 0 < upgrad_reg_eps"),
    ("upgrad_norm_eps", float("nan"), "a number, 0 <= upgrad_norm_eps"),
])
def test_bad_hyperparameters_name_the_setting_and_the_allowed_values(setting, value, allowed):
    with pytest.raises(ValueError) as e:
        TrainConfig(**{setting: value})
    assert setting in str(e.value)
    name, key = setting.split("_", 1)
    with pytest.raises(ValueError) as e:
        make_method(name, P0, **{key: value})
    assert f"setting {setting}={value!r} is not allowed; allowed values: {allowed}" in str(e.value)
