"""Gradient methods: PCGrad's surgery by hand, its invariants, shared-parameter detection, telemetry."""
import json

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from mtbert import gradients
from mtbert.gradients import pcgrad_coefficients, pcgrad_project, sum_rows
from mtbert.methods import METHODS, make_method


def T(*rows):
    return torch.tensor(rows, dtype=torch.float64)


def project_task(G, i, order):
    """g_i^PC for task i visiting the others in `order` (the other tasks visit nobody)."""
    C, n = pcgrad_coefficients(G @ G.T, [order if k == i else [] for k in range(len(G))])
    return C[i] @ G, n


def algorithm1(G, orders):
    """Algorithm 1 of the paper written on the vectors themselves, as a reference."""
    total, n = torch.zeros_like(G[0]), 0
    for i in range(len(G)):
        g = G[i].clone()
        for j in orders[i]:
            if j != i and g @ G[j] < 0:
                g = g - (g @ G[j]) / (G[j] @ G[j]) * G[j]
                n += 1
        total += g
    return total, n


# ---- the projection, hand-computed ------------------------------------------------------------

def test_2d_hand_computed():
    # g1.g2 = -1 < 0.  g1' = g1 - (-1/2) g2 = (1,0) + (-1/2, 1/2) = (1/2, 1/2)
    #                   g2' = g2 - (-1/1) g1 = (-1,1) + (1,0)     = (0, 1)
    G = T([1.0, 0.0], [-1.0, 1.0])
    g1, n1 = project_task(G, 0, [1])
    g2, n2 = project_task(G, 1, [0])
    assert torch.allclose(g1, T([0.5, 0.5])[0], atol=1e-15) and n1 == 1
    assert torch.allclose(g2, T([0.0, 1.0])[0], atol=1e-15) and n2 == 1
    total, n = pcgrad_project(G, torch.Generator().manual_seed(0))
    assert torch.allclose(total, torch.tensor([0.5, 1.5], dtype=torch.float64), atol=1e-15) and n == 2
    assert torch.equal(G, T([1.0, 0.0], [-1.0, 1.0]))  # inputs untouched


# g1=(1,0,0), g2=(-1,1,0), g3=(0,-1,1): g1.g2=-1, g1.g3=0, g2.g3=-1; |g1|^2=1, |g2|^2=|g3|^2=2.
G3 = T([1.0, 0.0, 0.0], [-1.0, 1.0, 0.0], [0.0, -1.0, 1.0])
CASES_3D = [
    # task 1, g2 then g3: (1,0,0) + 1/2 (-1,1,0) = (1/2,1/2,0); .g3 = -1/2 -> + 1/4 (0,-1,1)
    (0, [1, 2], [0.5, 0.25, 0.25], 2),
    # task 1, g3 first: g1.g3 = 0, no projection; then g2 as above
    (0, [2, 1], [0.5, 0.5, 0.0], 1),
    # task 2, g1 then g3: (-1,1,0) + 1 (1,0,0) = (0,1,0); .g3 = -1 -> + 1/2 (0,-1,1)
    (1, [0, 2], [0.0, 0.5, 0.5], 2),
    # task 2, g3 then g1: (-1,1,0) + 1/2 (0,-1,1) = (-1,1/2,1/2); .g1 = -1 -> + (1,0,0)
    (1, [2, 0], [0.0, 0.5, 0.5], 2),
    # task 3, g1 (dot 0, skipped) then g2: (0,-1,1) + 1/2 (-1,1,0)
    (2, [0, 1], [-0.5, -0.5, 1.0], 1),
    # task 3, g2 then g1: (-1/2,-1/2,1); .g1 = -1/2 -> + 1/2 (1,0,0). Against the ORIGINAL g1:
    # projecting against g1^PC = (1/2,1/4,1/4) instead would give something else.
    (2, [1, 0], [0.0, -0.5, 1.0], 2),
]


@pytest.mark.parametrize("i,order,expected,n_expected", CASES_3D)
def test_3d_hand_computed_order_matters(i, order, expected, n_expected):
    g, n = project_task(G3, i, order)
    assert torch.allclose(g, torch.tensor(expected, dtype=torch.float64), atol=1e-15)
    assert n == n_expected


def test_pcgrad_project_uses_one_permutation_per_task():
    gen, ref = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    for _ in range(5):  # several steps: all six orders are hit
        total, n = pcgrad_project(G3, gen)
        parts = [project_task(G3, i, torch.randperm(3, generator=ref).tolist()) for i in range(3)]
        assert torch.allclose(total, sum(g for g, _ in parts), atol=1e-15)
        assert n == sum(k for _, k in parts)


def test_gram_form_equals_algorithm1_on_the_vectors():
    gen = torch.Generator().manual_seed(4)
    for K in (2, 3, 4, 5):
        for _ in range(10):
            G = torch.randn(K, 23, generator=gen, dtype=torch.float64)
            orders = [torch.randperm(K, generator=gen).tolist() for _ in range(K)]
            C, n = pcgrad_coefficients(G @ G.T, orders)
            expected, n_expected = algorithm1(G, orders)
            assert n == n_expected and torch.allclose(C.sum(0) @ G, expected, atol=1e-12)


def test_projected_is_orthogonal_to_the_conflicting_gradient():
    gen = torch.Generator().manual_seed(0)
    for _ in range(50):
        G = torch.randn(2, 17, generator=gen, dtype=torch.float64)
        g, n = project_task(G, 0, [1])
        if G[0] @ G[1] < 0:
            assert n == 1 and abs(float(g @ G[1])) < 1e-12
            # only the g_j component was removed: g_i = g_i^PC + (g_i.g_j / ||g_j||^2) g_j
            assert torch.allclose(g + (G[0] @ G[1]) / (G[1] @ G[1]) * G[1], G[0], atol=1e-12)
        else:
            assert n == 0 and torch.equal(g, G[0])


def test_no_conflict_pcgrad_equals_sum_exactly():
    gen = torch.Generator().manual_seed(1)
    for K in (1, 2, 3, 4):
        G = torch.rand(K, 33, generator=gen)  # non-negative entries: every dot product >= 0
        total, n = pcgrad_project(G, torch.Generator().manual_seed(0))
        expected = G[0].clone()
        for k in range(1, K):
            expected = expected + G[k]
        assert n == 0 and torch.equal(total, expected) and torch.equal(sum_rows(G), expected)


def test_conflicts_are_projected_for_random_vectors():
    # with a conflict PCGrad differs from the sum, and every projected g_i no longer conflicts
    # with the LAST g_j it was projected against
    gen = torch.Generator().manual_seed(2)
    G = torch.randn(3, 9, generator=gen, dtype=torch.float64)
    G[1] = -G[0] + 0.1 * G[1]  # force a conflict between tasks 0 and 1
    total, n = pcgrad_project(G, torch.Generator().manual_seed(0))
    assert n >= 2 and not torch.allclose(total, G.sum(0))


# ---- a tiny multitask model -------------------------------------------------------------------

class Tiny(nn.Module):
    """trunk: all tasks; pair: para and sts only (a subset); one head per task."""

    def __init__(self, dtype=torch.float64):
        super().__init__()
        torch.manual_seed(0)
        self.trunk = nn.Linear(4, 5).to(dtype)
        self.pair = nn.Linear(5, 5).to(dtype)
        self.sst_head = nn.Linear(5, 3).to(dtype)
        self.para_head = nn.Linear(5, 1).to(dtype)
        self.sts_head = nn.Linear(5, 1).to(dtype)
        self.unused = nn.Linear(2, 2).to(dtype)
        with torch.no_grad():  # sts pulls the shared layers against para: a sure conflict
            self.sts_head.weight.copy_(self.para_head.weight)
        self.x = torch.randn(6, 4).to(dtype)
        self.y = torch.randint(0, 3, (6,))

    def losses(self, tasks=("sst", "para", "sts")):
        h = torch.tanh(self.trunk(self.x))
        z = torch.tanh(self.pair(h))
        out = {  # the constants keep every loss positive (famo takes their logs) and change no gradient
            "sst": F.cross_entropy(self.sst_head(h), self.y),
            "para": 1 + self.para_head(z).pow(2).mean() + self.para_head(z).mean(),
            "sts": 3 - self.sts_head(z).mean() + 0.1 * self.sts_head(z).pow(2).mean(),
        }
        return {t: out[t] for t in tasks}


def per_param_grads(model, tasks=("sst", "para", "sts")):
    """{task: {name: grad or None}}, each loss differentiated from its own forward pass."""
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    params = [p for p in model.parameters() if p.requires_grad]
    out = {}
    for t in tasks:
        gs = torch.autograd.grad(model.losses((t,))[t], params, allow_unused=True)
        out[t] = dict(zip(names, gs))
    return out


def reference_pcgrad(g, tasks, generator):
    """PCGrad written per parameter name, independent of the flat layout: shared = used by >= 2."""
    names = list(g[tasks[0]])
    shared = [n for n in names if sum(g[t][n] is not None for t in tasks) >= 2]
    zero = {n: torch.zeros_like(next(g[t][n] for t in tasks if g[t][n] is not None)) for n in shared}
    vec = {t: {n: g[t][n] if g[t][n] is not None else zero[n] for n in shared} for t in tasks}
    dot = lambda a, b: sum((a[n] * b[n]).sum() for n in shared)
    result = {n: None for n in names}
    for i, t in enumerate(tasks):
        gi = dict(vec[t])
        for j in torch.randperm(len(tasks), generator=generator).tolist():
            if j == i:
                continue
            gj = vec[tasks[j]]
            d = dot(gi, gj)
            if d < 0:
                gi = {n: gi[n] - d / dot(gj, gj) * gj[n] for n in shared}
        for n in shared:
            result[n] = gi[n] if result[n] is None else result[n] + gi[n]
    for n in names:
        if n not in shared:
            users = [t for t in tasks if g[t][n] is not None]
            result[n] = g[users[0]][n] if users else None
    return result


def trainable(model):
    return [p for p in model.parameters() if p.requires_grad]


def grads_of(model):
    return {n: p.grad for n, p in model.named_parameters() if p.requires_grad}


# ---- methods on the tiny model ----------------------------------------------------------------

def test_unknown_method_names_the_setting_and_choices():
    with pytest.raises(ValueError) as e:
        make_method("adam", trainable(Tiny()))
    msg = str(e.value)
    assert "gradient_method='adam'" in msg and f"allowed values: {', '.join(METHODS)}" in msg


def test_pcgrad_end_to_end_matches_a_manual_step():
    model, manual = Tiny(), Tiny()
    method = make_method("pcgrad", trainable(model), seed=3)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    ref_gen = torch.Generator().manual_seed(3)
    for _ in range(3):
        opt.zero_grad()
        stats = method.backward(model.losses())
        opt.step()
        g = reference_pcgrad(per_param_grads(manual), ("sst", "para", "sts"), ref_gen)
        with torch.no_grad():
            for n, p in manual.named_parameters():
                if g[n] is not None:
                    p -= 0.1 * g[n]
        assert stats["projections"] > 0 and stats["conflicts"] >= 1
    for (n, p), q in zip(model.named_parameters(), manual.parameters()):
        assert torch.allclose(p, q, atol=1e-12), n


def test_sum_end_to_end_equals_backward_of_summed_loss():
    for telemetry in (True, False):
        model, manual = Tiny(), Tiny()
        method = make_method("sum", trainable(model), telemetry=telemetry)
        opt = torch.optim.Adam(model.parameters(), lr=0.01)
        opt_m = torch.optim.Adam(manual.parameters(), lr=0.01)
        for _ in range(3):
            opt.zero_grad(), opt_m.zero_grad()
            stats = method.backward(model.losses())
            sum(manual.losses().values()).backward()
            opt.step(), opt_m.step()
            assert stats["projections"] == 0 and (("cos" in stats) == telemetry)
        for (n, p), q in zip(model.named_parameters(), manual.parameters()):
            assert torch.allclose(p, q, atol=1e-12), n


def test_subset_shared_parameter_and_heads():
    model = Tiny()
    g = per_param_grads(model)
    method = make_method("pcgrad", trainable(model))
    stats = method.backward(model.losses())
    assert stats["projections"] > 0
    got = grads_of(model)
    # heads: their own task's gradient, exactly, never projected
    for t in ("sst", "para", "sts"):
        for n in (f"{t}_head.weight", f"{t}_head.bias"):
            assert torch.allclose(got[n], g[t][n], atol=1e-14)
    # `pair` is used by para and sts only, and they conflict: it is shared, so it is projected;
    # the pytorch-pcgrad bug (shared = used by ALL tasks) would give it the plain sum
    plain = g["para"]["pair.weight"] + g["sts"]["pair.weight"]
    assert not torch.allclose(got["pair.weight"], plain, atol=1e-6)
    # the unused layer has no gradient, as after loss.backward()
    assert got["unused.weight"] is None and got["unused.bias"] is None


def test_telemetry_against_direct_computation():
    model = Tiny()
    g = per_param_grads(model)
    shared = ["trunk.weight", "trunk.bias", "pair.weight", "pair.bias"]  # used by >= 2 tasks

    def flat(t):  # sst does not use `pair`: zeros there
        return torch.cat([(g[t][n] if g[t][n] is not None else torch.zeros_like(g["para"][n])).reshape(-1)
                          for n in shared])

    for name in METHODS:
        stats = make_method(name, trainable(model)).backward(model.losses())
        json.dumps(stats, allow_nan=False)
        assert list(stats["cos"]) == ["sst/para", "sst/sts", "para/sts"]
        for pair, c in stats["cos"].items():
            a, b = pair.split("/")
            assert c == pytest.approx(F.cosine_similarity(flat(a), flat(b), dim=0).item(), abs=1e-6)
        for t, norm in stats["grad_norm"].items():
            assert norm == pytest.approx(flat(t).norm().item(), rel=1e-6)
        assert stats["conflicts"] == sum(c < 0 for c in stats["cos"].values()) >= 1
        assert stats["cos"]["para/sts"] < 0


def test_two_of_three_tasks_and_key_order():
    model = Tiny()
    losses = model.losses(("sts", "sst"))  # given out of order
    assert list(losses) == ["sts", "sst"]
    stats = make_method("pcgrad", trainable(model)).backward(losses)
    assert list(stats["cos"]) == ["sst/sts"] and list(stats["grad_norm"]) == ["sst", "sts"]
    # with only sst and sts present, `pair` is used by one task: it is sts's own, unprojected
    g = per_param_grads(model, ("sts",))["sts"]
    assert torch.allclose(model.pair.weight.grad, g["pair.weight"], atol=1e-14)


def test_one_task():
    model = Tiny()
    g = per_param_grads(model, ("para",))["para"]
    stats = make_method("pcgrad", trainable(model)).backward(model.losses(("para",)))
    assert stats["cos"] == {} and stats["conflicts"] == 0 and stats["projections"] == 0
    all_own = torch.cat([v.reshape(-1) for v in g.values() if v is not None])
    assert stats["grad_norm"]["para"] == pytest.approx(all_own.norm().item(), rel=1e-9)
    assert torch.allclose(model.trunk.weight.grad, g["trunk.weight"], atol=1e-14)


def test_frozen_encoder_reports_cos_as_absent():
    model = Tiny()
    for p in (*model.trunk.parameters(), *model.pair.parameters()):
        p.requires_grad_(False)
    g = per_param_grads(model)
    stats = make_method("pcgrad", model.parameters()).backward(model.losses())  # frozen ones skipped
    assert "cos" not in stats and stats["conflicts"] == 0 and stats["projections"] == 0
    sst = torch.cat([g["sst"]["sst_head.weight"].reshape(-1), g["sst"]["sst_head.bias"]])
    assert stats["grad_norm"]["sst"] == pytest.approx(sst.norm().item(), rel=1e-9)
    assert torch.allclose(model.sst_head.weight.grad, g["sst"]["sst_head.weight"], atol=1e-14)
    assert model.trunk.weight.grad is None


def run_steps(method, model, steps):
    out = []
    for _ in range(steps):
        method.backward(model.losses())
        out.append(torch.cat([p.grad.reshape(-1) for p in trainable(model) if p.grad is not None]))
    return out


def three_way_conflict():
    """Three tasks on one shared vector, the G3 gradients: PCGrad's result depends on the order."""
    w = nn.Parameter(torch.zeros(3, dtype=torch.float64))
    targets = G3.clone()

    class M:
        def losses(self):  # d/dw (-t . w) = -t: gradients -G3 (same conflicts as G3)
            return {t: -(targets[k] @ w) for k, t in enumerate(("sst", "para", "sts"))}

        def parameters(self):
            return [w]

    return M()


def test_same_seed_same_orders_and_different_seed_differs():
    m = three_way_conflict()
    a = run_steps(make_method("pcgrad", m.parameters(), seed=5), m, 12)
    b = run_steps(make_method("pcgrad", m.parameters(), seed=5), m, 12)
    c = run_steps(make_method("pcgrad", m.parameters(), seed=6), m, 12)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not all(torch.equal(x, y) for x, y in zip(a, c))
    assert len({tuple(x.tolist()) for x in a}) > 1  # the order really changes the result


def test_state_dict_round_trip_resumes_the_same_orders():
    m = three_way_conflict()
    first = make_method("pcgrad", m.parameters(), seed=11)
    run_steps(first, m, 3)
    state = first.state_dict()
    after = run_steps(first, m, 8)
    resumed = make_method("pcgrad", m.parameters(), seed=0)
    resumed.load_state_dict({"generator": state["generator"].tolist()})  # JSON-friendly too
    assert all(torch.equal(x, y) for x, y in zip(after, run_steps(resumed, m, 8)))
    assert state["generator"].dtype == torch.uint8
    assert make_method("sum", m.parameters()).state_dict() == {}


def test_all_reduce_sees_each_task_full_gradient_before_surgery():
    model = Tiny()
    P = sum(p.numel() for p in model.parameters())
    used = P - sum(p.numel() for p in model.unused.parameters())
    for name in METHODS:
        hyper = {"max_norm": 0.0} if name == "nashmtl" else {}  # its norm cap is not homogeneous
        for telemetry in (True, False):
            model.zero_grad(set_to_none=True)
            make_method(name, trainable(model), telemetry=telemetry, **hyper).backward(model.losses())
            base = {n: g.clone() for n, g in grads_of(model).items() if g is not None}
            calls = []

            def double(flat):  # two identical ranks, summed; PCGrad is positively homogeneous
                calls.append(flat.numel())
                flat.mul_(2)

            method = make_method(name, trainable(model), telemetry=telemetry, all_reduce=double, **hyper)
            method.backward(model.losses())
            reduced_losses = [3] if METHODS[name].uses_losses else []  # the loss values a weighting reads
            if not METHODS[name].needs_gram and not telemetry:
                assert calls == reduced_losses + [used]  # one weighted sum's gradient; all_reduce is linear
            else:
                assert calls == reduced_losses + [used] * 3
            for n, g in base.items():
                assert torch.allclose(grads_of(model)[n], 2 * g, atol=1e-12), (name, n)


def test_bf16_params_get_bf16_grads_from_float32_surgery():
    model = Tiny(dtype=torch.bfloat16)
    method = make_method("pcgrad", trainable(model))
    assert method.dtype == torch.float32
    stats = method.backward(model.losses())
    json.dumps(stats, allow_nan=False)
    assert all(p.grad.dtype == torch.bfloat16 for n, p in model.named_parameters() if not n.startswith("unused"))


def test_bad_losses_are_named():
    model = Tiny()
    method = make_method("sum", trainable(model))
    with pytest.raises(ValueError, match="losses is empty"):
        method.backward({})
    with pytest.raises(ValueError, match="'sst'.*scalar"):
        method.backward({"sst": torch.ones(2, requires_grad=True)})
    with pytest.raises(ValueError, match="'para'.*trainable"):
        method.backward({"para": torch.tensor(1.0)})


# ---- per-task gradients written in place: one buffer, .grad views, the old results --------------

class TiedTiny(nn.Module):
    """Every kind of parameter: `emb` shared and tied (the input embedding and sst's output layer,
    the same Parameter used twice in one graph), `trunk` shared by all, `pair` shared by para and
    sts only, one head per task, `proj` used by sst alone, `unused` by nobody."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        d = torch.float64
        self.emb = nn.Embedding(7, 4).to(d)
        self.trunk, self.pair, self.proj = nn.Linear(4, 5).to(d), nn.Linear(5, 5).to(d), nn.Linear(5, 4).to(d)
        self.unused = nn.Linear(2, 2).to(d)
        self.para_head, self.sts_head = nn.Linear(5, 1).to(d), nn.Linear(5, 1).to(d)
        with torch.no_grad():
            self.sts_head.weight.copy_(self.para_head.weight)
        self.ids = {t: torch.randint(0, 7, (6, 3)) for t in ("sst", "para", "sts")}
        self.y = torch.randint(0, 7, (6,))

    def losses(self, tasks=("sst", "para", "sts")):
        out = {}
        for t in tasks:  # one forward per task, as the trainer does
            h = torch.tanh(self.trunk(self.emb(self.ids[t]).mean(1)))
            if t == "sst":
                out[t] = F.cross_entropy(self.proj(h) @ self.emb.weight.T, self.y)
            else:
                z = self.pair(h)
                head = self.para_head if t == "para" else self.sts_head
                out[t] = head(z).pow(2).mean() + (1.0 if t == "para" else -1.0) * head(z).mean()
        return out


def old_copying_method(method_name, model, tasks, generator):
    """The previous implementation, in short: torch.autograd.grad per task, copied into a fresh
    (K, P) buffer, shared columns first; returns {name: grad or None}."""
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    params = [p for p in model.parameters() if p.requires_grad]
    losses = model.losses(tasks)
    per = [torch.autograd.grad(losses[t], params, retain_graph=True, allow_unused=True) for t in tasks]
    users = [[k for k in range(len(tasks)) if per[k][i] is not None] for i in range(len(params))]
    cols = [i for i, u in enumerate(users) if len(u) >= 2] + [i for i, u in enumerate(users) if len(u) == 1]
    n_shared = sum(params[i].numel() for i, u in enumerate(users) if len(u) >= 2)
    G = torch.cat([torch.stack([(per[k][i] if per[k][i] is not None else torch.zeros_like(params[i])).reshape(-1)
                                for k in range(len(tasks))]) for i in cols], dim=1)
    if method_name == "pcgrad":
        shared, _ = pcgrad_project(G[:, :n_shared], generator)
        update = torch.cat([shared, sum_rows(G[:, n_shared:])])
    else:
        update = sum_rows(G)
    out, s = {n: None for n in names}, 0
    for i in cols:
        out[names[i]] = update[s:s + params[i].numel()].view(params[i].shape)
        s += params[i].numel()
    return out


@pytest.mark.parametrize("name", ["sum", "pcgrad"])
def test_in_place_gradients_equal_the_old_copying_implementation(name):
    model = TiedTiny()
    params = [model.emb.weight, *trainable(model), model.emb.weight]  # tied: listed twice, written once
    method = make_method(name, params, seed=2)
    ref_gen = torch.Generator().manual_seed(2)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    projections = 0
    for step in range(4):
        tasks = ("sst", "para", "sts") if step != 2 else ("sst", "sts")  # a step where `pair` is one task's
        expected = old_copying_method(name, model, tasks, ref_gen)
        stats = method.backward(model.losses(tasks))
        projections += stats["projections"]
        for n, p in model.named_parameters():
            if expected[n] is None:
                assert p.grad is None, (step, n)
            else:
                assert torch.allclose(p.grad, expected[n], atol=1e-13, rtol=1e-12), (step, n)
        opt.step()
    assert model.unused.weight.grad is None
    assert name == "sum" or projections > 0


def test_buffer_is_allocated_once_and_grads_are_views_into_it():
    model = TiedTiny()
    method = make_method("pcgrad", trainable(model))
    method.backward(model.losses())  # the first step finds the layout
    rows, update = method._buf.rows, method._buf.update
    ptrs = rows.data_ptr(), update.data_ptr()
    for _ in range(3):
        method.backward(model.losses())
        assert (method._buf.rows.data_ptr(), method._buf.update.data_ptr()) == ptrs
        for p in trainable(model):
            if p.grad is not None:  # a view of the update: no copy, no allocation of its own
                assert p.grad._base is update or p.grad._base is update._base
                assert update.data_ptr() <= p.grad.data_ptr() < update.data_ptr() + update.nbytes
    used = sum(p.numel() for p in trainable(model)) - sum(p.numel() for p in model.unused.parameters())
    assert method.grads.shape == (3, used) and method.nbytes == rows.nbytes + update.nbytes
    # the rows hold each task's own gradient, in `layout` order, zeros where a task does not reach
    g = per_param_grads_of(model, ("sst", "para", "sts"))
    for k, t in enumerate(("sst", "para", "sts")):
        for p, s, n in method.layout:
            ref = g[t][id(p)]
            want = torch.zeros(n, dtype=p.dtype) if ref is None else ref.reshape(-1)
            assert torch.allclose(method.grads[k, s:s + n], want, atol=1e-14)
    # another set of tasks changes which parameters are shared: a new layout, once
    method.backward(model.losses(("sst", "sts")))
    moved = method._buf.rows.data_ptr()
    method.backward(model.losses(("sst", "sts")))
    assert method._buf.rows.data_ptr() == moved and method.grads.shape[0] == 2


def per_param_grads_of(model, tasks):
    params = trainable(model)
    return {t: {id(p): g for p, g in zip(params, torch.autograd.grad(model.losses((t,))[t], params, allow_unused=True))}
            for t in tasks}


def test_no_per_step_allocation_of_the_gradient_size():
    model = TiedTiny()
    method = make_method("pcgrad", trainable(model))
    method.backward(model.losses())
    method.backward(model.losses())
    P = sum(p.numel() for p in trainable(model))
    losses = model.losses()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
        method.backward(losses)
    sizes = [e.cpu_memory_usage for e in prof.events() if e.cpu_memory_usage > 0]
    assert sizes, "the profiler saw no allocation at all: the check would be empty"
    assert max(sizes) < P * 8, sorted(sizes)[-5:]  # every allocation smaller than one (P,) float64 vector


class _Boom(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, g):
        raise RuntimeError("boom")


def test_a_failing_backward_leaves_no_hooks_and_no_stale_grads():
    model = TiedTiny()
    method = make_method("sum", trainable(model))
    losses = model.losses()
    losses["sts"] = _Boom.apply(losses["sts"])
    with pytest.raises(RuntimeError, match="boom"):
        method.backward(losses)
    assert all(p.grad is None for p in trainable(model)) and method.grads is None
    assert all(not p._post_accumulate_grad_hooks for p in trainable(model))
    g = per_param_grads_of(model, ("sst", "para", "sts"))
    method.backward(model.losses())  # the next step is right again
    for p in trainable(model):
        parts = [g[t][id(p)] for t in g if g[t][id(p)] is not None]
        if parts:
            assert torch.allclose(p.grad, sum(parts), atol=1e-13)


class LookedUp(TiedTiny):
    """TiedTiny with a 40-row table that the tasks reach through lookups of a few rows only (a
    word embedding), other rows each step, and `tied` set: sst also uses it as its output layer."""

    def __init__(self, tied: bool):
        super().__init__()
        self.tied = tied
        self.emb = nn.Embedding(40, 4).to(torch.float64)
        self.new_ids(0)

    def new_ids(self, step):
        gen = torch.Generator().manual_seed(step)
        self.ids = {t: torch.randint(8 * k, 8 * k + 6, (6, 3), generator=gen)  # 6 of 40 rows per task
                    for k, t in enumerate(("sst", "para", "sts"))}
        self.ids["sts"][0, 0] = self.ids["para"][0, 0]  # one row looked up by two tasks

    def losses(self, tasks=("sst", "para", "sts")):
        out = super().losses(tasks)
        if "sst" in out and not self.tied:  # sst's output layer without the tied table
            h = torch.tanh(self.trunk(self.emb(self.ids["sst"]).mean(1)))
            out["sst"] = F.cross_entropy(self.proj(h) @ self.trunk.weight.T, self.y % 5)
        return out


@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize("name", ["sum", "pcgrad"])
def test_looked_up_table_rows_give_the_dense_results(name, tied, monkeypatch):
    monkeypatch.setattr(gradients, "TABLE_MIN_SIZE", 40 * 4)  # the tiny table counts as a large one
    model = LookedUp(tied)
    method = make_method(name, trainable(model), seed=4)
    ref_gen = torch.Generator().manual_seed(4)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    sparse_steps = 0
    for step in range(5):
        model.new_ids(step)  # other rows each step: last step's rows must be zeroed, not left behind
        tasks = ("sst", "para", "sts") if step != 3 else ("para", "sts")
        expected = old_copying_method(name, model, tasks, ref_gen)
        stats = method.backward(model.losses(tasks))
        sparse_steps += any(method.params[i] is model.emb.weight for i in method._sparse)
        for n, p in model.named_parameters():
            if expected[n] is None:
                assert p.grad is None, (step, n)
            else:
                assert torch.allclose(p.grad, expected[n], atol=1e-13, rtol=1e-12), (step, n)
        assert name == "sum" or stats["projections"] >= 0
        if tied:  # sst's use as an output layer makes its gradient dense in that task's row
            assert (method.grads[0, :method._buf.n_shared] != 0).sum() > 6 * 4
        opt.step()
    # the shortcut was taken where it applies: untied, or the step without sst
    assert sparse_steps == (1 if tied else 5)


def test_graphs_are_kept_only_while_a_later_backward_needs_them():
    separate = TiedTiny()  # one forward per task: each graph is freed by its own backward
    losses = separate.losses()
    make_method("sum", trainable(separate)).backward(losses)
    for t in ("sst", "para", "sts"):
        with pytest.raises(RuntimeError, match="second time"):
            torch.autograd.grad(losses[t], separate.trunk.weight)
    shared = Tiny()  # one trunk forward for all tasks: kept until the last task's backward
    losses = shared.losses()
    g = per_param_grads(shared)
    make_method("pcgrad", trainable(shared)).backward(losses)
    assert torch.allclose(shared.sst_head.weight.grad, g["sst"]["sst_head.weight"], atol=1e-14)
    with pytest.raises(RuntimeError, match="second time"):
        torch.autograd.grad(losses["sts"], shared.trunk.weight)


def test_small_tables_keep_the_plain_matrix_product():
    # below TABLE_MIN_SIZE (a BERT's position embeddings) a table is zeroed and multiplied in full,
    # so the Gram matrix is the one product over all shared columns, summed in the same order
    model = LookedUp(tied=False)
    method = make_method("pcgrad", trainable(model))
    method.backward(model.losses())
    assert method._sparse == {} and model.emb.weight.numel() < gradients.TABLE_MIN_SIZE
    shared = method.grads[:, :method._buf.n_shared]
    assert torch.equal(method._gram(method.grads, method._buf.n_shared), (shared @ shared.T).double())


@pytest.mark.parametrize("name", ["sum", "pcgrad"])
def test_task_weights_reconstruct_the_update_on_the_shared_parameters(name):
    """stats['weights'] are the λ_k of update = Σ λ_k g_k on the shared parameters: 1 each for sum;
    for PCGrad, whose result is a combination of the original gradients, each projection of g_i off a
    conflicting g_j adds a positive multiple of g_j: every λ_k >= 1, above 1 for a task others were
    projected onto."""
    model = three_way_conflict()
    (w,) = model.parameters()
    method = make_method(name, [w], seed=0)
    stats = method.backward(model.losses())
    grads = {t: -G3[k] for k, t in enumerate(("sst", "para", "sts"))}  # d/dw of -t.w
    rebuilt = sum(stats["weights"][t] * g for t, g in grads.items())
    assert torch.allclose(w.grad, rebuilt, atol=1e-12)
    if name == "sum":
        assert stats["weights"] == {"sst": 1.0, "para": 1.0, "sts": 1.0}
    else:
        assert stats["projections"] > 0 and min(stats["weights"].values()) >= 1.0
        assert max(stats["weights"].values()) > 1.0
    no_telemetry = make_method(name, [w], seed=0, telemetry=False).backward(model.losses())
    assert no_telemetry["weights"].keys() == stats["weights"].keys()
