"""Loss-weighting methods (uw, dwa, rlw, gradnorm, famo): each update rule against the rule written out by
hand (or LibMTL's / the FAMO authors' formulas through autograd) on scripted losses, the gradient they set,
one task, the state round trip, bad settings. Exact resume of real runs: tests/test_train.py."""
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from mtbert.config import TrainConfig
from mtbert.methods import LOSS_WEIGHTINGS, METHODS, make_method
from mtbert.train import Trainer

TASKS = ["sst", "para", "sts"]
NAMES = [cls.name for cls in LOSS_WEIGHTINGS]
# scripted global losses, one row per step (task order sst, para, sts)
SCRIPT = torch.tensor([[1.2, 0.7, 2.5], [1.0, 0.65, 2.0], [0.9, 0.6, 1.1], [0.85, 0.61, 0.9],
                       [0.7, 0.5, 0.95], [0.6, 0.52, 0.7], [0.58, 0.4, 0.6], [0.5, 0.41, 0.62]],
                      dtype=torch.float64)


def T(x):
    return torch.tensor(x, dtype=torch.float64)


class Scripted(nn.Module):
    """Three task losses whose values are scripted and whose gradients on the shared `a` are
    value_k * x_k: L_k = value_k * exp((a - a.detach()) . x_k). `own` is sst's own parameter."""

    def __init__(self, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.a = nn.Parameter(torch.zeros(4, dtype=torch.float64))
        self.own = nn.Parameter(torch.zeros((), dtype=torch.float64))
        self.x = torch.randn(3, 4, generator=g, dtype=torch.float64)

    def losses(self, values):
        d = self.a - self.a.detach()
        out = {t: values[k] * torch.exp(d @ self.x[k]) for k, t in enumerate(TASKS)}
        out["sst"] = out["sst"] * torch.exp(self.own - self.own.detach())
        return out


def sgd(params, lr=0.1):
    with torch.no_grad():
        for p in params:
            p -= lr * p.grad


# ---- each rule by hand on scripted losses ---------------------------------------------------------

def test_uw_weights_and_log_variance_gradient_follow_libmtl():
    m = make_method("uw", Scripted().parameters(), tasks=TASKS)
    s_ref = torch.full((3,), -0.5, dtype=torch.float64, requires_grad=True)  # LibMTL's initial value
    for L in SCRIPT:
        c, n = m.coefficients(None, L)
        # LibMTL: loss = (losses / (2 exp(s)) + s / 2).sum(); its weights 1 / (2 exp(s))
        (L / (2 * s_ref.exp()) + s_ref / 2).sum().backward()
        assert n == 0
        assert torch.allclose(c, (1 / (2 * s_ref.exp())).detach(), rtol=0, atol=1e-9)
        (s,) = m.parameters()
        assert torch.allclose(s.grad.double(), s_ref.grad, rtol=0, atol=1e-7)  # s is float32
        expected = (s.detach() - 0.5 * s_ref.grad.float())
        sgd([s], 0.5)
        assert torch.equal(s.detach(), expected)
        with torch.no_grad():
            s_ref.copy_(s.double())  # follow the float32 parameter exactly
        s_ref.grad = None
    assert not torch.allclose(c, torch.full((3,), math.exp(0.5) / 2, dtype=torch.float64))  # it learned


def test_dwa_weights_from_the_last_two_windows():
    m = make_method("dwa", Scripted().parameters(), tasks=TASKS, temperature=2.0, window=2)
    for step, L in enumerate(SCRIPT):
        c, _ = m.coefficients(None, L)
        w = step // 2  # the window this step is in; windows w-1 and w-2 are complete
        if w < 2:
            expected = [1.0, 1.0, 1.0]
        else:
            mean = lambda i: [(SCRIPT[2 * i][k] + SCRIPT[2 * i + 1][k]).item() / 2 for k in range(3)]
            r = [a / b for a, b in zip(mean(w - 1), mean(w - 2))]
            e = [math.exp(x / 2.0) for x in r]
            expected = [3 * x / sum(e) for x in e]
        assert torch.allclose(c, T(expected), rtol=0, atol=1e-12), step
    assert c.sum().item() == pytest.approx(3) and not torch.equal(c, torch.ones(3, dtype=torch.float64))


def test_rlw_draws_a_softmax_of_normals_from_its_own_seeded_generator():
    m = make_method("rlw", Scripted().parameters(), seed=7, tasks=TASKS)
    ref = torch.Generator().manual_seed(7)
    torch.manual_seed(0)
    before = torch.get_rng_state()
    seen = []
    for L in SCRIPT:
        c, _ = m.coefficients(None, L)
        z = torch.randn(3, generator=ref, dtype=torch.float64).tolist()
        e = [math.exp(x) for x in z]
        assert torch.allclose(c, T([x / sum(e) for x in e]), rtol=0, atol=1e-12)
        seen.append(tuple(c.tolist()))
    assert torch.equal(torch.get_rng_state(), before)  # the global RNG is untouched
    assert len(set(seen)) == len(SCRIPT)


def gradnorm_reference(s, L, L0, norms, alpha):
    """LibMTL's GradNorm step on given gradient norms, through autograd: (weights, d L_grad / d s)."""
    s = s.clone().requires_grad_(True)
    K = len(L)
    loss_scale = K * F.softmax(s, dim=-1)
    G_per_loss = loss_scale * norms  # ||w_k g_k||
    G = G_per_loss.mean(0)
    L_i = L / L0
    r_i = L_i / L_i.mean()
    constant_term = (G * (r_i ** alpha)).detach()
    (G_per_loss - constant_term).abs().sum(0).backward()
    return loss_scale.detach(), s.grad


@pytest.mark.parametrize("alpha, scale", [(1.5, [1.0, 3.0, 0.2]), (1.5, [1.0, 1.02, 0.98]),
                                          (0.0, [1.0, 1.02, 0.98]), (3.0, [1.0, 1.02, 0.98])])
def test_gradnorm_weights_and_gradient_from_scripted_gradient_norms(alpha, scale):
    # nearly equal norms: the sign of G_k - target_k, hence the update, depends on alpha
    model = Scripted()
    m = make_method("gradnorm", model.parameters(), tasks=TASKS, alpha=alpha)
    (logits,) = m.parameters()
    g = torch.Generator().manual_seed(1)
    for step, L in enumerate(SCRIPT):
        grads = torch.randn(3, 6, generator=g, dtype=torch.float64)
        grads = grads / grads.norm(dim=1, keepdim=True) * T(scale)[:, None]
        c, _ = m.coefficients(grads @ grads.T, L)
        w_ref, grad_ref = gradnorm_reference(logits.detach().double(), L, SCRIPT[0], grads.norm(dim=1), alpha)
        assert torch.allclose(c, w_ref, rtol=0, atol=1e-9), step
        assert torch.allclose(logits.grad.double(), grad_ref, rtol=0, atol=1e-6), step  # .grad is float32
        sgd([logits], 0.3)
    assert torch.equal(m.state_dict()["initial_losses"], SCRIPT[0])
    assert c.sum().item() == pytest.approx(3) and c.std() > 0.05  # moved away from equal weights


def famo_reference(steps, lr=0.025, gamma=0.01, eps=1e-8):
    """The FAMO authors' weighted loss differentiated through autograd for the weights, and Adam written
    out by hand (torch's L2 weight decay form) for the logits, LibMTL's order: update on (t-1, t), then weigh."""
    K = steps.size(1)
    z, m, v = torch.zeros(K, dtype=torch.float64), torch.zeros(K, dtype=torch.float64), torch.zeros(K, dtype=torch.float64)
    b1, b2, adam_eps, n = 0.9, 0.999, 1e-8, 0
    out, prev = [], None
    for L in steps:
        if prev is not None:
            delta = (prev + eps).log() - (L + eps).log()
            zz = z.clone().requires_grad_(True)
            (d,) = torch.autograd.grad(F.softmax(zz, -1), zz, grad_outputs=delta)
            n += 1
            grad = d + gamma * z
            m = b1 * m + (1 - b1) * grad
            v = b2 * v + (1 - b2) * grad * grad
            z = z - lr * (m / (1 - b1 ** n)) / ((v / (1 - b2 ** n)).sqrt() + adam_eps)
        prev = L
        losses = L.clone().requires_grad_(True)
        w = F.softmax(z, -1)
        D = losses + eps
        c = (w / D).sum().detach()
        (weights,) = torch.autograd.grad((D.log() * w / c).sum(), losses)
        out.append(weights)
    return out


def test_famo_weights_follow_the_authors_rule_with_a_hand_written_adam():
    m = make_method("famo", Scripted().parameters(), tasks=TASKS, lr=0.025, gamma=0.01)
    ref = famo_reference(SCRIPT)
    for step, L in enumerate(SCRIPT):
        c, _ = m.coefficients(None, L)
        assert torch.allclose(c, ref[step], rtol=0, atol=1e-9), step
        assert c.sum().item() == pytest.approx(1.0, abs=1e-12)
    assert not torch.allclose(m.state_dict()["logits"], torch.zeros(3, dtype=torch.float64))
    big = make_method("famo", Scripted().parameters(), tasks=TASKS, lr=0.3, gamma=0.0)
    for step, L in enumerate(SCRIPT):
        assert torch.allclose(big.coefficients(None, L)[0], famo_reference(SCRIPT, 0.3, 0.0)[step], rtol=0, atol=1e-9)


# ---- through backward: the gradient of sum_k c_k L_k, heads included -------------------------------

class Net(nn.Module):
    """A shared trunk, three heads (one backward each would reach the trunk and its own head)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.trunk = nn.Linear(5, 6)
        self.heads = nn.ModuleDict({t: nn.Linear(6, 2) for t in TASKS})
        self.x = torch.randn(10, 5)
        self.y = torch.randint(0, 2, (10,))

    def losses(self, tasks=TASKS):
        h = torch.tanh(self.trunk(self.x))
        out = {"sst": F.cross_entropy(self.heads["sst"](h), self.y),
               "para": self.heads["para"](h).pow(2).mean(),
               "sts": (self.heads["sts"](h) - 1).pow(2).mean() * 3}
        return {t: out[t] for t in tasks}


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("telemetry", [True, False])
def test_backward_sets_the_gradient_of_the_weighted_loss_sum(name, telemetry):
    net = Net()
    params = list(net.parameters())
    hyper = {"window": 1} if name == "dwa" else {}  # weights other than 1 from step 3 on
    method = make_method(name, params, seed=4, telemetry=telemetry, tasks=TASKS, **hyper)
    opt = torch.optim.SGD(params + method.parameters(), lr=0.2)
    weights = []
    for step in range(4):
        # the weights a twin restored to the state before this step finds from the losses (and the
        # Gram matrix over the shared trunk, by autograd)
        twin = make_method(name, params, seed=99, tasks=TASKS, **hyper)
        twin.load_state_dict(method.state_dict())
        losses = net.losses()
        flat = torch.stack([torch.cat([g.reshape(-1) for g in torch.autograd.grad(losses[t], list(net.trunk.parameters()),
                                                                                 retain_graph=True)]) for t in TASKS])
        expected, _ = twin.coefficients((flat @ flat.T).double(), torch.stack([losses[t].detach() for t in TASKS]).double())
        stats = method.backward(net.losses())
        c = [stats["weights"][t] for t in TASKS]
        assert torch.allclose(T(c), expected, rtol=0, atol=1e-9)
        total = sum(w * loss for w, loss in zip(c, net.losses().values()))
        ref = torch.autograd.grad(total, params)
        for p, r in zip(params, ref):
            assert torch.allclose(p.grad, r, rtol=1e-5, atol=1e-7)
        if telemetry:
            assert set(stats) >= {"grad_norm", "cos", "conflicts", "weights"}
        weights.append(c)
        opt.step()
        opt.zero_grad(set_to_none=True)
    assert weights[0] != weights[-1] and weights[2] != [1.0, 1.0, 1.0]


def test_gradnorm_reads_the_norms_over_the_shared_parameters_only():
    net = Net()
    method = make_method("gradnorm", list(net.parameters()), tasks=TASKS, telemetry=False)
    losses = net.losses()
    trunk = list(net.trunk.parameters())
    norms = torch.stack([torch.cat([g.reshape(-1) for g in torch.autograd.grad(losses[t], trunk, retain_graph=True)])
                         .norm() for t in TASKS]).double()
    L = torch.stack([losses[t].detach() for t in TASKS]).double()
    method.backward(net.losses())
    _, grad_ref = gradnorm_reference(torch.zeros(3, dtype=torch.float64), L, L, norms, 1.5)
    assert torch.allclose(method.parameters()[0].grad.double(), grad_ref, rtol=1e-5, atol=1e-7)
    assert method.parameters()[0].grad.abs().sum() > 0


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("telemetry", [True, False])
def test_one_task_gives_the_plain_gradient_except_uw_which_scales_it(name, telemetry):
    net = Net()
    params = list(net.parameters())
    method = make_method(name, params, telemetry=telemetry, tasks=["sts"])
    for _ in range(3):
        stats = method.backward(net.losses(["sts"]))
        plain = torch.autograd.grad(net.losses(["sts"])["sts"], params, allow_unused=True)
        # uw's loss is (exp(-s) L + s)/2: its gradient is c L' with c = exp(-s)/2 (exp(0.5)/2 at first)
        c = stats["weights"]["sts"]
        if name == "uw":
            assert c == pytest.approx(math.exp(-method.parameters()[0].item()) / 2, rel=1e-6)
        else:
            assert c == 1.0
        for p, g in zip(params, plain):
            assert (p.grad is None) if g is None else torch.allclose(p.grad, c * g, rtol=1e-6, atol=1e-8)
        if method.parameters():
            sgd(method.parameters())


# ---- state: tensors only, restored exactly ---------------------------------------------------------

@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("known_tasks", [True, False])
def test_a_restored_method_continues_with_the_same_weights(name, known_tasks, tmp_path):
    hyper = {"window": 2} if name == "dwa" else {}

    def run(method, model, rows):
        out = []
        for L in rows:
            out.append(method.backward(model.losses(L))["weights"])
            sgd(method.parameters())
        return out

    model = Scripted()
    first = make_method(name, model.parameters(), seed=5, tasks=TASKS, **hyper)
    run(first, model, SCRIPT[:3])
    save_file(first.state_dict(), str(tmp_path / "state.safetensors"))  # fits a safetensors file
    state = load_file(str(tmp_path / "state.safetensors"))
    after = run(first, model, SCRIPT[3:])
    resumed = make_method(name, model.parameters(), seed=123, tasks=TASKS if known_tasks else None, **hyper)
    resumed.load_state_dict(state)
    assert run(resumed, model, SCRIPT[3:]) == after
    fresh = make_method(name, model.parameters(), seed=123, tasks=TASKS, **hyper)
    assert run(fresh, model, SCRIPT[3:]) != after  # the state mattered


def test_learned_weights_need_the_tasks_and_every_step_trains_all_of_them():
    net = Net()
    with pytest.raises(ValueError, match="uw learns one weight per task: make it with tasks="):
        make_method("uw", net.parameters()).parameters()
    method = make_method("famo", net.parameters(), tasks=TASKS)
    with pytest.raises(ValueError, match="famo keeps one weight per task of sst, para, sts.*schedule='parallel'"
                                         ".*this step has sst"):
        method.backward(net.losses(["sst"]))
    with pytest.raises(ValueError, match="famo needs non-negative task losses"):
        method.backward({t: loss - 10 for t, loss in net.losses().items()})
    restored = make_method("uw", net.parameters())
    restored.load_state_dict({"log_var": torch.zeros(2)})
    with pytest.raises(ValueError, match="uw holds weights for 2 task"):
        restored.backward(net.losses())


# ---- settings -------------------------------------------------------------------------------------

@pytest.mark.parametrize("key, value, allowed", [
    ("dwa_window", 0, "an integer >= 1"),
    ("dwa_window", 2.5, "an integer >= 1"),
    ("dwa_temperature", 0, "a number > 0"),
    ("gradnorm_alpha", -1, "a number >= 0"),
    ("famo_lr", 0, "a number > 0"),
    ("famo_gamma", -0.1, "a number >= 0"),
])
def test_bad_hyperparameters_name_the_setting_and_allowed_values(key, value, allowed):
    with pytest.raises(ValueError) as e:
        TrainConfig.from_dict({key: value})
    assert str(e.value) == f"setting {key}={value!r} is not allowed; allowed values: {allowed}"
    method, hyper = key.split("_", 1)  # the method itself, made directly, says the same in its own words
    with pytest.raises(ValueError) as e:
        make_method(method, Net().parameters(), **{hyper: value})
    assert str(e.value).startswith(f"setting {key}={value!r} is not allowed; allowed values: ")
    assert key in str(e.value).split("allowed values: ")[1]


def test_defaults_are_the_published_ones():
    cfg = TrainConfig()
    assert (cfg.dwa_temperature, cfg.gradnorm_alpha, cfg.famo_lr, cfg.famo_gamma) == (2.0, 1.5, 0.025, 0.01)
    assert {"uw", "dwa", "rlw", "gradnorm", "famo"} <= set(METHODS)


def test_a_loss_weighting_refuses_a_one_task_schedule():
    """Refused when the settings are read, before any data or model is loaded."""
    with pytest.raises(ValueError, match="gradient_method='uw' .* needs schedule='parallel', not "
                                         "schedule='round-robin'"):
        TrainConfig(gradient_method="uw", schedule="round-robin")
    assert TrainConfig(gradient_method="pcgrad", schedule="round-robin").schedule == "round-robin"
