import torch
import torch.nn.functional as F


def fmc(a, b, temperature=0.1):
    """Forward mapping classification a -> b with sim(x, y) = -||x - y||^2 (Method §6).

    a, b [S, L, d]: S sequences of L steps of the two modalities. Returns a scalar.
    """
    sim = -(a[:, :, None] - b[:, None, :]).pow(2).sum(dim=-1)  # [S, L, L]: sim(a_t, b_k)
    S, L, _ = sim.shape
    targets = torch.arange(L, device=a.device).repeat(S)  # step t of a must pick step t of b
    return F.cross_entropy((sim / temperature).reshape(S * L, L), targets)
