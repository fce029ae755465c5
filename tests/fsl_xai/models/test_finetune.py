"""The fine-tuning baseline: initialisation from prototypes, one Adam step by hand, and agreement
with torch's own autograd + Adam."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fsl_xai.models import make_model

SUPPORT = torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, 2.0], [0.0, 4.0]])
LABELS = torch.tensor([0, 0, 1, 1])


def test_zero_steps_is_protonet_decision():
    m = make_model("finetune", torch.nn.Identity(), steps=0).fit_embeddings(SUPPORT, LABELS)
    # prototypes (1, 0) and (0, 3): W = 2p, b = -|p|^2
    torch.testing.assert_close(m.extras_["head_weight"], torch.tensor([[2.0, 0.0], [0.0, 6.0]]))
    torch.testing.assert_close(m.extras_["head_bias"], torch.tensor([-1.0, -9.0]))
    q = torch.tensor([[1.0, 1.0], [3.0, 2.0]])
    # logits = -|q - p|^2 + |q|^2
    expected = -torch.cdist(q, m.prototypes_).pow(2) + q.pow(2).sum(1, keepdim=True)
    torch.testing.assert_close(m.logits_from_embeddings(q), expected)
    proto = make_model("protonet", torch.nn.Identity()).fit_embeddings(SUPPORT, LABELS)
    assert torch.equal(m.logits_from_embeddings(q).argmax(1), proto.logits_from_embeddings(q).argmax(1))


def test_one_adam_step_by_hand():
    lr = 0.1
    m = make_model("finetune", torch.nn.Identity(), steps=1, lr=lr).fit_embeddings(SUPPORT, LABELS)
    w0 = np.array([[2.0, 0.0], [0.0, 6.0]])
    b0 = np.array([-1.0, -9.0])
    x = SUPPORT.numpy().astype(np.float64)
    z = x @ w0.T + b0
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    g = (p - np.eye(2)[LABELS.numpy()]) / 4
    gw, gb = g.T @ x, g.sum(0)
    # Adam's first step moves every parameter with a non-zero gradient by lr against its sign
    # (up to eps)
    exp_w = w0 - lr * gw / (np.abs(gw) + 1e-8)
    exp_b = b0 - lr * gb / (np.abs(gb) + 1e-8)
    np.testing.assert_allclose(m.extras_["head_weight"].numpy(), exp_w, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(m.extras_["head_bias"].numpy(), exp_b, rtol=1e-5, atol=1e-6)


def _torch_reference(m, x, y):
    """The same training with autograd and torch.optim.Adam."""
    w0, b0 = m.init_head(m.compute_prototypes(x, y))
    w, b = w0.double().requires_grad_(True), b0.double().requires_grad_(True)
    params = [w] if m.head == "cosine" else [w, b]
    opt = torch.optim.Adam(params, lr=m.lr, weight_decay=m.weight_decay)
    gen = torch.Generator().manual_seed(m.seed)
    order, pos = None, len(x)
    for _ in range(m.steps):
        if m.batch_size is None:
            xb, yb = x, y
        else:
            if pos + m.batch_size > len(x):
                order, pos = torch.randperm(len(x), generator=gen), 0
            idx = order[pos: pos + m.batch_size]
            pos += m.batch_size
            xb, yb = x[idx], y[idx]
        loss = F.cross_entropy(m.head_logits(xb.double(), w, b), yb)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return w.detach().float(), b.detach().float()


@pytest.mark.parametrize("head", ["linear", "cosine"])
@pytest.mark.parametrize("batch_size", [None, 3])
def test_matches_torch_autograd_and_adam(head, batch_size):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(9, 5, generator=gen)
    y = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2])
    m = make_model("finetune", torch.nn.Identity(), head=head, steps=25, lr=0.05, weight_decay=0.01,
                   batch_size=batch_size, seed=4).fit_embeddings(x, y)
    w, b = _torch_reference(m.model, x, y)
    torch.testing.assert_close(m.extras_["head_weight"], w, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(m.extras_["head_bias"], b, atol=1e-5, rtol=1e-5)


def test_training_fits_the_support_and_is_deterministic():
    gen = torch.Generator().manual_seed(1)
    # overlapping classes: the prototype rule misclassifies some support points, training fixes them
    x = torch.cat([torch.randn(10, 4, generator=gen), torch.randn(10, 4, generator=gen) + 0.7])
    y = torch.arange(2).repeat_interleave(10)
    before = make_model("finetune", torch.nn.Identity(), steps=0).fit_embeddings(x, y)
    after = make_model("finetune", torch.nn.Identity(), steps=300, lr=0.05).fit_embeddings(x, y)
    loss_before = F.cross_entropy(before.logits_from_embeddings(x), y)
    loss_after = F.cross_entropy(after.logits_from_embeddings(x), y)
    assert loss_after < loss_before
    acc_before = (before.logits_from_embeddings(x).argmax(1) == y).float().mean()
    acc_after = (after.logits_from_embeddings(x).argmax(1) == y).float().mean()
    assert acc_after >= acc_before
    again = make_model("finetune", torch.nn.Identity(), steps=300, lr=0.05).fit_embeddings(x, y)
    assert torch.equal(again.extras_["head_weight"], after.extras_["head_weight"])
    # the seed orders the mini-batches: another seed, another head
    s0 = make_model("finetune", torch.nn.Identity(), batch_size=4, seed=0).fit_embeddings(x, y)
    s1 = make_model("finetune", torch.nn.Identity(), batch_size=4, seed=1).fit_embeddings(x, y)
    assert not torch.equal(s0.extras_["head_weight"], s1.extras_["head_weight"])


def test_add_to_class_retrains_from_stored_embeddings():
    m = make_model("finetune", torch.nn.Identity(), steps=10).fit_embeddings(SUPPORT, LABELS)
    m = m.add_to_class(torch.tensor([3.0, 0.0]), 0)
    ref = make_model("finetune", torch.nn.Identity(), steps=10).fit_embeddings(
        torch.cat([SUPPORT, torch.tensor([[3.0, 0.0]])]), torch.tensor([0, 0, 1, 1, 0]))
    torch.testing.assert_close(m.extras_["head_weight"], ref.extras_["head_weight"])
    torch.testing.assert_close(m.prototypes_, torch.tensor([[5 / 3, 0.0], [0.0, 3.0]]))
