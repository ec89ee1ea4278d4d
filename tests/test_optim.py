"""Optimizers, clipping and schedules, against closed forms and PyTorch's update rules."""
from __future__ import annotations

import math

import numpy as np
import pytest

from rnnkit import optim
from rnnkit.layers import Linear


def _model(seed=0):
    m = Linear(3, 2, dtype=np.float64, seed=seed)
    for _, _, g in m.named_parameters():
        g[...] = np.random.default_rng(seed + 1).standard_normal(g.shape)
    return m


def test_sgd_plain_and_momentum_match_closed_form():
    m = _model()
    w0, g = m.params["weight"].copy(), m.grads["weight"].copy()
    opt = optim.SGD(m, lr=0.1, momentum=0.9)
    opt.step()
    np.testing.assert_allclose(m.params["weight"], w0 - 0.1 * g)  # v1 = g
    opt.step()
    np.testing.assert_allclose(m.params["weight"], w0 - 0.1 * g - 0.1 * (0.9 * g + g))  # v2 = 0.9 v1 + g


def test_nesterov_needs_momentum():
    with pytest.raises(ValueError, match="nesterov=True needs momentum > 0"):
        optim.SGD(_model(), lr=0.1, nesterov=True)


def test_adam_first_step_is_lr_times_sign():
    m = _model()
    w0, g = m.params["weight"].copy(), m.grads["weight"].copy()
    optim.Adam(m, lr=0.01).step()
    np.testing.assert_allclose(m.params["weight"], w0 - 0.01 * g / (np.abs(g) + 1e-8), rtol=1e-6)


def test_adamw_decays_weights_decoupled():
    m = _model()
    for _, _, g in m.named_parameters():
        g[...] = 0.0
    w0 = m.params["weight"].copy()
    optim.AdamW(m, lr=0.1, weight_decay=0.5).step()
    np.testing.assert_allclose(m.params["weight"], w0 * (1 - 0.1 * 0.5))


def test_adam_minimises_a_quadratic():
    m = Linear(4, 1, bias=False, dtype=np.float64, seed=3)
    target = np.array([[1.0, -2.0, 3.0, 0.5]])
    opt = optim.Adam(m, lr=0.05)
    for _ in range(500):
        m.zero_grad()
        m.grads["weight"] += 2 * (m.params["weight"] - target)
        opt.step()
    np.testing.assert_allclose(m.params["weight"], target, atol=1e-3)


def test_optimizer_state_round_trip():
    """The moments and the step count come back: with gradients that change between steps, a
    fresh Adam (no moments, step 1 again) would take another step than the restored one."""
    rng = np.random.default_rng(5)
    grads = [rng.standard_normal((2, 3)) for _ in range(3)]
    m1, m2, m3 = _model(), _model(), _model()
    o1, o2 = optim.Adam(m1, lr=0.01), optim.Adam(m2, lr=0.01)
    for m, o in ((m1, o1), (m2, o2)):
        for g in grads[:2]:
            m.grads["weight"][...] = g
            o.step()
    m3.load_state_dict(m2.state_dict())
    o2b, fresh = optim.Adam(m2, lr=1.0), optim.Adam(m3, lr=0.01)
    o2b.load_state_dict(o2.state_dict())
    assert o2b.step_count == 2 and o2b.lr == 0.01
    for key, value in o2.state_dict()["tensors"].items():
        np.testing.assert_array_equal(o2b.state_dict()["tensors"][key], value)
    for m, o in ((m1, o1), (m2, o2b), (m3, fresh)):
        m.grads["weight"][...] = grads[2]
        o.step()
    np.testing.assert_allclose(m1.params["weight"], m2.params["weight"], rtol=1e-15)
    assert np.abs(m3.params["weight"] - m1.params["weight"]).max() > 1e-4  # what a lost state would give



def test_optimizer_state_is_checked_before_anything_loads():
    m = _model()
    adam, sgd = optim.Adam(m, lr=0.01), optim.SGD(m, lr=0.1, momentum=0.9)
    adam.step()
    sgd.step()
    fresh = optim.Adam(_model(), lr=0.5)
    with pytest.raises(ValueError, match=r"Adam state 'weight.momentum': slot 'momentum' is not one of Adam's"):
        fresh.load_state_dict(sgd.state_dict())
    with pytest.raises(ValueError, match=r"SGD state 'weight.exp_avg': slot 'exp_avg'"):
        optim.SGD(_model(), lr=0.1, momentum=0.9).load_state_dict(adam.state_dict())
    bad = adam.state_dict()
    bad["tensors"]["weight.exp_avg"] = np.zeros((1, 3))
    with pytest.raises(ValueError, match=r"'weight.exp_avg' has shape \(1, 3\); expected \(2, 3\)"):
        fresh.load_state_dict(bad)
    with pytest.raises(ValueError, match="expected 'scalars' and 'tensors'"):
        fresh.load_state_dict({"scalars": {"lr": 1.0, "step_count": 1}})
    assert fresh.lr == 0.5 and fresh.step_count == 0 and fresh.state == {}  # nothing of a refused state kept


def test_clip_grad_norm():
    m = _model()
    norm = math.sqrt(sum(float((g ** 2).sum()) for _, _, g in m.named_parameters()))
    assert optim.clip_grad_norm(m, 1e9) == pytest.approx(norm)
    before = optim.clip_grad_norm(m, 0.5)
    after = math.sqrt(sum(float((g ** 2).sum()) for _, _, g in m.named_parameters()))
    assert before == pytest.approx(norm) and after == pytest.approx(0.5, rel=1e-5)


def test_schedules():
    opt = optim.SGD(_model(), lr=1.0)
    step = optim.StepLR(opt, step_size=2, gamma=0.5)
    assert [step.step() for _ in range(4)] == [1.0, 0.5, 0.5, 0.25]
    opt = optim.SGD(_model(), lr=20.0)
    plateau = optim.ReduceLROnPlateau(opt, factor=0.25, patience=0)
    assert [plateau.step(v) for v in (5.0, 4.0, 4.5, 3.0)] == [20.0, 20.0, 5.0, 5.0]
    opt = optim.SGD(_model(), lr=1.0)
    cos = optim.CosineLR(opt, total_steps=10, warmup_steps=2, min_lr=0.1)
    lrs = [cos.step() for _ in range(10)]
    assert lrs[1] == pytest.approx(1.0) and lrs[-1] == pytest.approx(0.1) and lrs[5] > lrs[8]
    with pytest.raises(ValueError, match="learning rate -1"):
        optim.SGD(_model(), lr=-1)


def test_schedule_state_is_its_progress_and_the_parameters_stay_the_constructors():
    cos = optim.CosineLR(optim.SGD(_model(), lr=1.0), total_steps=10, min_lr=0.1)
    for _ in range(4):
        cos.step()
    cos.scale(0.05)  # a rollback: base 0.05, below min_lr, which follows it down
    state = cos.state_dict()
    assert set(state) == {"base_lr", "last_step", "lr_scale"} and cos.params()["total_steps"] == 10
    longer = optim.CosineLR(optim.SGD(_model(), lr=1.0), total_steps=20, min_lr=0.1)
    longer.load_state_dict(state)
    assert (longer.total_steps, longer.last_step, longer.base_lr, longer.min_lr) == (20, 4, 0.05, 0.05)
    old = {"base_lr": 1.0, "last_step": 10, "total_steps": 10, "warmup_steps": 0, "min_lr": 0.0}  # older checkpoints
    longer = optim.CosineLR(optim.SGD(_model(), lr=1.0), total_steps=20)
    longer.load_state_dict(old)
    assert longer.total_steps == 20 and longer.last_step == 10 and longer.rate() == pytest.approx(0.5)
    plateau = optim.ReduceLROnPlateau(optim.SGD(_model(), lr=1.0), factor=0.5)
    plateau.step(3.0)
    plateau.step(4.0)
    again = optim.ReduceLROnPlateau(optim.SGD(_model(), lr=1.0), factor=0.1, patience=2)
    again.load_state_dict(plateau.state_dict())
    assert (again.best, again.bad_steps, again.last_step, again.factor, again.patience) == (3.0, 0, 2, 0.1, 2)
    with pytest.raises(ValueError, match="gamma -1; expected > 0"):
        optim.StepLR(optim.SGD(_model(), lr=1.0), step_size=1, gamma=-1)
