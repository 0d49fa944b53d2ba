import torch

VARIANCE_EPS = 1e-7  # added to σ² in the division and in the log, as in medst.losses.temporal


def miss_costs(L, t, eps, variance_lambda=1e-3):
    """RMR's terms when the cycle from step t keeps 1 - eps on t and leaks eps to step k (Method §6.3).

    L: steps; t: the start step; eps: the leaked mass; variance_lambda: λ.
    Returns [L, 3] float64: row k = (e_t², e_t² / (σ_t² + 1e-7), λ log(σ_t² + 1e-7)); row t: nothing leaks.
    """
    times = torch.arange(L, dtype=torch.float64) / L  # τ_j = j / L
    alpha = torch.zeros(L, L, dtype=torch.float64)  # row k: the landing distribution α_t for a leak to k
    alpha[:, t] = 1 - eps
    alpha[torch.arange(L), torch.arange(L)] += eps  # row t: (1 - eps) + eps = 1 on t
    mu = alpha @ times  # [L] μ_t
    var = (alpha * (times[None, :] - mu[:, None]) ** 2).sum(dim=1)  # [L] σ_t²
    e2 = (times[t] - mu) ** 2  # [L] e_t²
    return torch.stack([e2, e2 / (var + VARIANCE_EPS), variance_lambda * torch.log(var + VARIANCE_EPS)], dim=1)
