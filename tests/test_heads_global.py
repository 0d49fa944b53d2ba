"""Projection heads (Method §2) and the global image-report loss (Method §4)."""

from __future__ import annotations

import math
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn as nn
import torch.nn.functional as F

from medst.losses.contrastive import global_alignment_loss
from medst.models.heads import GlobalHead, LocalHead

# ----------------------------------------------------------------------------- heads


def test_global_head_shapes_and_batchnorm():
    head = GlobalHead(16, hidden_dim=32, out_dim=8).train()
    out = head(torch.randn(10, 16) * 3 + 1)
    assert out.shape == (10, 8)
    # the last BatchNorm has no affine: outputs are standardised per dimension in training
    assert torch.allclose(out.mean(0), torch.zeros(8), atol=1e-5)
    assert torch.allclose(out.var(0, unbiased=False), torch.ones(8), atol=1e-3)
    assert not head.mlp[-1].affine and head.mlp[1].affine
    assert not torch.allclose(out.norm(dim=1), torch.ones(10))  # not normalised inside the head


def test_local_head_masked_batchnorm_uses_valid_tokens_only():
    torch.manual_seed(0)
    head = LocalHead(12, hidden_dim=24, out_dim=6).train()
    ref = GlobalHead(12, hidden_dim=24, out_dim=6).train()
    ref.load_state_dict(head.state_dict())
    tokens = torch.randn(3, 7, 12)
    mask = torch.tensor([[1] * 7, [1] * 4 + [0] * 3, [1] * 2 + [0] * 5], dtype=torch.bool)
    tokens[~mask] = 50.0  # padding with extreme values must not leak into the statistics
    out = head(tokens, mask)
    expect = ref(tokens[mask])  # BatchNorm over exactly the valid tokens
    assert out.shape == (3, 7, 6)
    assert torch.allclose(out[mask], expect, atol=1e-5)
    assert (out[~mask] == 0).all()
    # running statistics too
    assert torch.allclose(head.mlp[1].running_mean, ref.mlp[1].running_mean, atol=1e-6)
    # the unmasked (published) form differs: padding enters BatchNorm
    unmasked = LocalHead(12, hidden_dim=24, out_dim=6).train()
    unmasked.load_state_dict(ref.state_dict())
    assert not torch.allclose(unmasked(tokens)[mask], expect, atol=1e-2)
    # gradients reach the valid tokens only
    tokens.requires_grad_(True)
    head(tokens, mask).square().sum().backward()
    assert (tokens.grad[~mask] == 0).all() and tokens.grad[mask].abs().sum() > 0


def test_local_head_without_mask_is_per_token_linear():
    torch.manual_seed(1)
    head = LocalHead(5, hidden_dim=9, out_dim=4).eval()
    for bn in (head.mlp[1], head.mlp[4]):  # non-trivial running statistics
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
    tokens = torch.randn(2, 3, 5)
    out = head(tokens)
    for b in range(2):
        for t in range(3):
            assert torch.allclose(out[b, t], head.mlp(tokens[b, t][None])[0], atol=1e-6)
    # as the published 1x1 convolutions over tokens
    conv = nn.Conv1d(5, 9, 1)
    conv.weight.data = head.mlp[0].weight.data[..., None]
    conv.bias.data = head.mlp[0].bias.data
    assert torch.allclose(conv(tokens.transpose(1, 2)).transpose(1, 2), head.mlp[0](tokens), atol=1e-6)


# ------------------------------------------------------------------------ global loss


def loop_loss(img, txt, tau):
    """Per-row reference: -log softmax of the matching pair, both directions, averaged over rows."""
    B = img.shape[0]
    s = [[float(img[i] @ txt[j]) / tau for j in range(B)] for i in range(B)]
    i2t = sum(-s[i][i] + math.log(sum(math.exp(s[i][j]) for j in range(B))) for i in range(B)) / B
    t2i = sum(-s[j][j] + math.log(sum(math.exp(s[i][j]) for i in range(B))) for j in range(B)) / B
    return i2t + t2i


def unit(*shape, seed=0):
    return F.normalize(torch.randn(*shape, generator=torch.Generator().manual_seed(seed)), dim=-1)


def test_global_loss_equals_loop_and_is_symmetric():
    img, txt = unit(6, 8, seed=1), unit(6, 8, seed=2)
    loss = global_alignment_loss(img, txt, temperature=0.07)
    assert loss.item() == pytest.approx(loop_loss(img.double(), txt.double(), 0.07), rel=1e-5)
    assert global_alignment_loss(txt, img).item() == pytest.approx(loss.item(), rel=1e-6)
    assert global_alignment_loss(img, txt, temperature=0.5).item() == pytest.approx(loop_loss(img, txt, 0.5), rel=1e-5)
    # aligned pairs score lower than shuffled ones
    assert global_alignment_loss(img, img).item() < global_alignment_loss(img, img.roll(1, 0)).item()
    with pytest.raises(ValueError, match="must both be"):
        global_alignment_loss(img, txt[:5])


class TwoTowers(nn.Module):
    def __init__(self):
        super().__init__()
        self.img = nn.Linear(5, 4)
        self.txt = nn.Linear(7, 4)

    def forward(self, x, y):
        return F.normalize(self.img(x), dim=-1), F.normalize(self.txt(y), dim=-1)


def _worker(rank, world, port, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.manual_seed(0)
    model = nn.parallel.DistributedDataParallel(TwoTowers())
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(world * 3, 5, generator=g), torch.randn(world * 3, 7, generator=g)
    rows = slice(rank * 3, rank * 3 + 3)
    img, txt = model(x[rows], y[rows])
    img.retain_grad()
    loss = global_alignment_loss(img, txt, temperature=0.1)
    loss.backward()
    torch.save(
        {"loss": loss.detach(), "img_grad": img.grad, "grads": {k: p.grad for k, p in model.module.named_parameters()}},
        os.path.join(out_dir, f"rank{rank}.pt"),
    )
    dist.destroy_process_group()


def test_global_loss_distributed_matches_single_process(tmp_path):
    world = 2
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_worker, args=(world, port, str(tmp_path)), nprocs=world, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(world)]

    torch.manual_seed(0)
    model = TwoTowers()
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(world * 3, 5, generator=g), torch.randn(world * 3, 7, generator=g)
    img, txt = model(x, y)
    img.retain_grad()
    loss = global_alignment_loss(img, txt, temperature=0.1)
    loss.backward()
    # the mean of the ranks' losses is the loss on the whole batch
    assert torch.stack([r["loss"] for r in ranks]).mean().item() == pytest.approx(loss.item(), rel=1e-5)
    # each rank scores its rows against all 6 (not just its own 3): its loss differs from a local-only one
    local_only = global_alignment_loss(img[:3].detach(), txt[:3].detach(), temperature=0.1)
    assert ranks[0]["loss"].item() != pytest.approx(local_only.item(), rel=1e-3)
    # DDP-averaged parameter gradients equal the single-process gradients
    for name, p in model.named_parameters():
        for r in ranks:
            assert torch.allclose(r["grads"][name], p.grad, atol=1e-6), name
    # each rank's embedding gradient is world x the single-process one (DDP's averaging undoes it)
    for rank, r in enumerate(ranks):
        assert torch.allclose(r["img_grad"] / world, img.grad[rank * 3 : rank * 3 + 3], atol=1e-6)
