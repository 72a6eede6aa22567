"""Tests of support/optim.py: which parameters each optimizer trains, and how."""
import pickle

import torch

from conftest import tiny_model
from support.optim import ADAM_EPS, MuonWithAdamW, configure_optimizer


def test_configure_optimizer_decays_exactly_the_matrices():
    model = tiny_model()
    opt = configure_optimizer(model, learning_rate=1e-3, weight_decay=0.1)
    decayed = {id(p) for g in opt.param_groups if g["weight_decay"] == 0.1 for p in g["params"]}
    plain = {id(p) for g in opt.param_groups if g["weight_decay"] == 0.0 for p in g["params"]}
    assert decayed == {id(p) for p in model.parameters() if p.dim() >= 2}
    assert plain == {id(p) for p in model.parameters() if p.dim() < 2}
    assert opt.param_groups[0]["betas"] == (0.9, 0.95)


def take_steps(model, opt, grads) -> None:
    """One optimizer step per entry of grads (a list of made-up gradients, one per parameter)."""
    for step_grads in grads:
        for p, g in zip(model.parameters(), step_grads):
            p.grad = g.clone()
        opt.step()
        opt.zero_grad()


def test_configured_optimizer_takes_the_same_steps_as_plain_adamw():
    model, twin = tiny_model(), tiny_model()
    fast = configure_optimizer(model, learning_rate=1e-2, weight_decay=0.1)
    plain = torch.optim.AdamW([{"params": [p for p in twin.parameters() if p.dim() >= 2], "weight_decay": 0.1},
                               {"params": [p for p in twin.parameters() if p.dim() < 2], "weight_decay": 0.0}],
                              lr=1e-2, betas=(0.9, 0.95), eps=ADAM_EPS, foreach=False)
    # The same made-up gradients for both, so only the optimisers' arithmetic can differ.
    torch.manual_seed(4)
    grads = [[torch.randn_like(p) for p in model.parameters()] for _ in range(3)]
    for net, opt in ((model, fast), (twin, plain)):
        take_steps(net, opt, grads)
    for p, q in zip(model.parameters(), twin.parameters()):
        assert torch.allclose(p, q, atol=1e-6)
    assert not torch.equal(model.tok_emb.weight, tiny_model().tok_emb.weight)    # it did move


def test_muon_moves_block_matrices_by_an_orthogonalized_update_and_the_rest_by_adamw():
    model, twin = tiny_model(), tiny_model()
    opt = configure_optimizer(model, learning_rate=1e-2, weight_decay=0.1, optimizer="muon", muon_lr=0.05)
    assert isinstance(opt, MuonWithAdamW)
    in_muon = {id(p) for g in opt.muon.param_groups for p in g["params"]}
    assert in_muon == {id(p) for name, p in model.named_parameters()
                       if p.dim() == 2 and name.startswith("blocks.")}
    assert {id(p) for g in opt.adamw.param_groups for p in g["params"]} == \
        {id(p) for p in model.parameters()} - in_muon                    # embeddings, gains, biases
    plain = torch.optim.AdamW([{"params": [twin.tok_emb.weight], "weight_decay": 0.1},
                               {"params": [p for p in twin.parameters() if p.dim() < 2], "weight_decay": 0.0}],
                              lr=1e-2, betas=(0.9, 0.95), eps=ADAM_EPS, foreach=False)
    # A gradient with known singular vectors and very unequal singular values (10 ... 0.3).
    torch.manual_seed(3)
    names = [name for name, _ in model.named_parameters()]
    grads = [[torch.randn_like(p) for p in model.parameters()]]
    rows, cols = model.blocks[0].mlp.up.weight.shape               # (4E, E): a tall matrix
    u = torch.linalg.qr(torch.randn(rows, cols))[0]
    vh = torch.linalg.qr(torch.randn(cols, cols))[0].T
    grads[0][names.index("blocks.0.mlp.up.weight")] = u @ torch.diag(torch.logspace(1, -0.5, cols)) @ vh
    start = model.blocks[0].mlp.up.weight.detach().clone()
    for net, o in ((model, opt), (twin, plain)):
        take_steps(net, o, grads)
    # The first step is the orthogonalized gradient itself, times lr and sqrt(rows / cols): in the
    # basis of the gradient's singular vectors it is diagonal, every value near 1, where the raw
    # gradient's ran from 10 down to 0.3.
    update = (start - model.blocks[0].mlp.up.weight.detach()) / (0.05 * (rows / cols) ** 0.5)
    inner = u.T @ update @ vh.T
    off_diagonal = inner - torch.diag(torch.diagonal(inner))
    assert off_diagonal.abs().max() < 0.05
    assert torch.diagonal(inner).min() > 0.5 and torch.diagonal(inner).max() < 1.5
    for (name, p), q in zip(model.named_parameters(), twin.parameters()):
        if id(p) not in in_muon:
            assert torch.allclose(p, q, atol=1e-6), name


def test_muon_matrices_decay_as_adamw_decays_its_matrices():
    # Decoupled weight decay: with nothing to learn, each step multiplies w by (1 - lr * weight_decay).
    model = tiny_model()
    opt = configure_optimizer(model, learning_rate=1e-2, weight_decay=0.5, optimizer="muon", muon_lr=0.05)
    before = [p.detach().clone() for g in opt.muon.param_groups for p in g["params"]]
    take_steps(model, opt, [[torch.zeros_like(p) for p in model.parameters()]])   # nothing to learn
    after = [p for g in opt.muon.param_groups for p in g["params"]]
    assert all(torch.allclose(a, b * (1 - 0.05 * 0.5)) for a, b in zip(after, before))
    assert not any(torch.equal(a, b) for a, b in zip(after, before))


def test_muon_state_dict_round_trip_continues_identically():
    torch.manual_seed(5)
    grads = [[torch.randn_like(p) for p in tiny_model().parameters()] for _ in range(4)]

    whole = tiny_model()
    opt = configure_optimizer(whole, 1e-2, 0.1, optimizer="muon")
    take_steps(whole, opt, grads)
    first = tiny_model()
    opt = configure_optimizer(first, 1e-2, 0.1, optimizer="muon")
    take_steps(first, opt, grads[:2])
    state = pickle.loads(pickle.dumps(opt.state_dict()))
    second = tiny_model()
    second.load_state_dict(first.state_dict())
    opt = configure_optimizer(second, 1e-2, 0.1, optimizer="muon")
    opt.load_state_dict(state)
    take_steps(second, opt, grads[2:])
    for p, q in zip(whole.parameters(), second.parameters()):
        assert torch.equal(p, q)


def test_adam_eps_is_the_gradient_size_below_which_adamw_barely_moves_a_weight():
    # Two embedding rows: one with a steady tiny gradient (a token the text never has, pushed down
    # by the softmax), one with an ordinary gradient. Adam's steps are nearly size-free: with the
    # default ε the tiny gradient still moves its row a tenth as far; with ε = 1e-6, a thousandth.
    def moved(adam_eps, optimizer):
        model = tiny_model()
        opt = configure_optimizer(model, 1e-2, 0.0, optimizer=optimizer, adam_eps=adam_eps)
        assert all(g["eps"] == adam_eps for g in getattr(opt, "adamw", opt).param_groups)
        start = model.tok_emb.weight.detach().clone()
        grads = [torch.zeros_like(p) for p in model.parameters()]
        grads[0][0], grads[0][1] = 1e-9, 1e-3           # tok_emb is the first parameter
        take_steps(model, opt, [grads] * 5)
        distance = (start - model.tok_emb.weight.detach()).abs().mean(dim=1)
        return distance[0] / distance[1]                 # the tiny row's step against the ordinary one's
    for optimizer in ("adamw", "muon"):
        assert 0.05 < moved(1e-8, optimizer) < 0.15
        assert moved(1e-6, optimizer) < 0.002
