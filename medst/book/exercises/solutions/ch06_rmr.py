import torch


def rmr(a, b, temperature=0.1, variance_lambda=1e-3):
    """Reverse mapping regression a -> b -> a with sim(x, y) = -||x - y||^2 (Method §6).

    a, b [S, L, d]. Returns a scalar (the Huber branch never fires for δ = 2 and is left out).
    """

    def sim(x, y):  # [S, L, d], [S, L, d] -> [S, L, L]
        return -(x[:, :, None] - y[:, None, :]).pow(2).sum(dim=-1)

    L = a.shape[1]
    beta = (sim(a, b) / temperature).softmax(dim=-1)  # [S, L, L] β_tk
    soft_nn = beta @ b  # [S, L, d] ṽ_t, the soft nearest neighbour of a_t in b
    alpha = (sim(soft_nn, a) / temperature).softmax(dim=-1)  # [S, L, L] α_tk: back onto a
    times = torch.arange(L, dtype=a.dtype, device=a.device) / L  # τ_k = k / L
    mu = alpha @ times  # [S, L] predicted time
    var = (alpha * (times - mu[..., None]) ** 2).sum(dim=-1)  # [S, L] σ²_t
    eps = 1e-7
    loss = (times - mu) ** 2 / (var + eps) + variance_lambda * torch.log(var + eps)
    return loss.mean()
