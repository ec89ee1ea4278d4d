"""Attention (dot and additive): float64 gradient checks with masked sources, mask semantics,
step-by-step == all-steps, and a live PyTorch parity check when torch is installed."""
from __future__ import annotations

import numpy as np
import pytest

import rnnkit
from rnnkit.layers.attention import Attention

F64 = np.float64
B, T, S, H = 3, 4, 5, 6
TOL = 1e-6


def _inputs(seed=0, query_size=H):
    rng = np.random.default_rng(seed)
    query = rng.standard_normal((B, T, query_size))
    memory = rng.standard_normal((B, S, H))
    mask = np.ones((B, S), dtype=bool)
    mask[1, 3:] = False  # padded tail
    mask[2, 1:] = False  # a single valid step
    return query, memory, mask


def _layer(score, query_size=H, seed=1):
    return Attention(query_size, H, score=score, attention_size=7 if score == "additive" else None,
                     dtype=F64, seed=seed)


@pytest.mark.parametrize("score", ["dot", "additive"])
@pytest.mark.parametrize("masked", [False, True], ids=["full", "masked"])
@pytest.mark.parametrize("one_step", [False, True], ids=["all-steps", "one-step"])
def test_gradcheck(score, masked, one_step):
    query, memory, mask = _inputs()
    if one_step:
        query = query[:, 0]
    report = rnnkit.gradcheck(_layer(score), (query, memory), forward_kwargs={"mask": mask if masked else None})
    assert report.passed(TOL), str(report)
    assert {"input.0", "input.1"} <= set(report.errors)  # query and memory were checked
    if score == "additive":
        assert {"weight_query", "bias", "weight_memory", "weight_score"} <= set(report.errors)


def test_gradcheck_additive_saturated_and_query_size():
    query, memory, mask = _inputs(seed=3, query_size=4)
    layer = Attention(4, H, score="additive", attention_size=5, dtype=F64, seed=2)
    report = rnnkit.gradcheck(layer, (query * 5.0, memory * 5.0), forward_kwargs={"mask": mask})
    assert report.passed(TOL), str(report)


@pytest.mark.parametrize("score", ["dot", "additive"])
def test_masked_steps_get_zero_weight_and_change_nothing(score):
    query, memory, mask = _inputs()
    layer = _layer(score)
    context, weights = layer.forward(query, memory, mask)
    assert np.all(weights[~np.broadcast_to(mask[:, None, :], weights.shape)] == 0.0)
    np.testing.assert_allclose(weights.sum(-1), 1.0, rtol=1e-12)
    garbage = memory.copy()
    garbage[~mask] = 1e3  # whatever sits at padded steps must not matter
    context2, weights2 = layer.forward(query, garbage, mask)
    np.testing.assert_array_equal(context, context2)
    np.testing.assert_array_equal(weights, weights2)
    dq, dm = layer.backward(np.ones_like(context2))
    assert np.all(dm[~mask] == 0.0)


@pytest.mark.parametrize("score", ["dot", "additive"])
def test_step_by_step_equals_all_steps(score):
    query, memory, mask = _inputs()
    rng = np.random.default_rng(5)
    dctx, dw = rng.standard_normal((B, T, H)), rng.standard_normal((B, T, S))
    full = _layer(score)
    ctx, w = full.forward(query, memory, mask)
    dq, dm = full.backward(dctx, dw)
    steps = _layer(score)
    outs = [steps.forward(query[:, t], memory, mask) for t in range(T)]
    np.testing.assert_allclose(np.stack([c for c, _ in outs], 1), ctx, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(np.stack([a for _, a in outs], 1), w, rtol=1e-12, atol=1e-12)
    dm_steps = np.zeros_like(memory)
    dq_steps = [None] * T
    for t in reversed(range(T)):  # LIFO, as a decoder's BPTT runs
        dq_steps[t], dm_t = steps.backward(dctx[:, t], dw[:, t])
        dm_steps += dm_t
    np.testing.assert_allclose(np.stack(dq_steps, 1), dq, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(dm_steps, dm, rtol=1e-10, atol=1e-12)
    for name in full.grads:
        np.testing.assert_allclose(steps.grads[name], full.grads[name], rtol=1e-10, atol=1e-12)


def test_errors_name_the_bad_value():
    with pytest.raises(ValueError, match="score 'cosine'"):
        Attention(4, score="cosine")
    with pytest.raises(ValueError, match="query_size 4 != memory_size 6"):
        Attention(4, 6, score="dot")
    query, memory, mask = _inputs()
    mask[0] = False
    with pytest.raises(ValueError, match="no valid step"):
        _layer("dot").forward(query, memory, mask)
    with pytest.raises(RuntimeError, match="backward called more times"):
        _layer("dot").backward(np.zeros((B, T, H)))


@pytest.mark.torch
@pytest.mark.parametrize("score", ["dot", "additive"])
def test_torch_parity(score):
    torch = pytest.importorskip("torch")
    query, memory, mask = _inputs(seed=7)
    layer = _layer(score)
    rng = np.random.default_rng(8)
    dctx, dw = rng.standard_normal((B, T, H)), rng.standard_normal((B, T, S))
    ctx, w = layer.forward(query, memory, mask)
    dq, dm = layer.backward(dctx, dw)

    tq = torch.tensor(query, requires_grad=True)
    tm = torch.tensor(memory, requires_grad=True)
    tp = {k: torch.tensor(v, requires_grad=True) for k, v in layer.params.items()}
    if score == "dot":
        e = tq @ tm.transpose(1, 2)
    else:
        pre = (tq @ tp["weight_query"].T + tp["bias"])[:, :, None, :] + (tm @ tp["weight_memory"].T)[:, None, :, :]
        e = torch.tanh(pre) @ tp["weight_score"]
    e = e.masked_fill(~torch.tensor(mask)[:, None, :], float("-inf"))
    ta = torch.softmax(e, dim=-1)
    tc = ta @ tm
    ((tc * torch.tensor(dctx)).sum() + (ta * torch.tensor(dw)).sum()).backward()

    np.testing.assert_allclose(ctx, tc.detach().numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(w, ta.detach().numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(dq, tq.grad.numpy(), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(dm, tm.grad.numpy(), rtol=1e-9, atol=1e-12)
    for name, t in tp.items():
        np.testing.assert_allclose(layer.grads[name], t.grad.numpy(), rtol=1e-9, atol=1e-12)
