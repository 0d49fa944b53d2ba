import torch


def rmr_mse(a, b, temperature=0.1):
    """Reverse mapping regression a -> b -> a with the plain squared error (Method §6.3 without σ²).

    a, b [S, L, d]: S sequences of L steps of the two modalities; sim(x, y) = -||x - y||². Returns a scalar.
    """

    def soft(x, y):  # softmax_k(sim(x_t, y_k) / T): [S, L, d], [S, L, d] -> [S, L, L]
        sim = -(x[:, :, None] - y[:, None, :]).pow(2).sum(dim=-1)
        return (sim / temperature).softmax(dim=-1)

    L = a.shape[1]
    beta = soft(a, b)  # [S, L, L] hop 1: a_t -> b
    alpha = soft(beta @ b, a)  # [S, L, L] hop 2: the soft neighbour ṽ_t -> a
    times = torch.arange(L, dtype=a.dtype, device=a.device) / L  # τ_k = k / L
    mu = alpha @ times  # [S, L] where the cycle lands
    return ((times - mu) ** 2).mean()
