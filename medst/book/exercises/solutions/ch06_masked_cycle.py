import torch

VARIANCE_EPS = 1e-7  # added to σ² in the division and in the log, as in medst.losses.temporal


def masked_cycle_loss(a, b, step_mask, temperature=0.1, variance_lambda=1e-3):
    """FMC(a -> b) + RMR(a -> b -> a) for sequences of different lengths padded to L (Method §6).

    a, b [S, L, d]; step_mask [S, L] bool, True for the first L_s >= 2 steps of sequence s. sim = -||x - y||².
    Returns a scalar: the mean of FMC_t + RMR_t over the real steps of all sequences.
    """

    def logits(x, y):  # sim(x_t, y_k) / T, padded steps k excluded: [S, L, d], [S, L, d] -> [S, L, L]
        sim = -(x[:, :, None] - y[:, None, :]).pow(2).sum(dim=-1) / temperature
        return sim.masked_fill(~step_mask[:, None, :], float("-inf"))

    L = a.shape[1]
    forward = logits(a, b)  # [S, L, L]
    fmc = -forward.log_softmax(dim=-1).diagonal(dim1=1, dim2=2)  # [S, L] CE(logits_t,:, t)
    alpha = logits(forward.softmax(dim=-1) @ b, a).softmax(dim=-1)  # [S, L, L] back onto a
    lengths = step_mask.sum(dim=1, keepdim=True).to(a.dtype)  # [S, 1] L_s
    times = torch.arange(L, dtype=a.dtype, device=a.device) / lengths  # [S, L] τ_k = k / L_s
    mu = (alpha * times[:, None, :]).sum(dim=-1)  # [S, L]
    var = (alpha * (times[:, None, :] - mu[..., None]) ** 2).sum(dim=-1)  # [S, L] σ²
    rmr = (times - mu) ** 2 / (var + VARIANCE_EPS) + variance_lambda * torch.log(var + VARIANCE_EPS)
    per_step = torch.where(step_mask, fmc + rmr, torch.zeros_like(rmr))  # padded steps: exactly 0
    return per_step.sum() / step_mask.sum()
