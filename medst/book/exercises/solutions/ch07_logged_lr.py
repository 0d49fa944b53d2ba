import torch


def logged_lr(steps, lr, warmup_ratio, total_steps):
    """The learning rate metrics.csv logs after step s: linear warm-up, then cosine to 0 (Method §7.2).

    steps [K] step numbers, 0 <= s <= total_steps. Returns [K] (float64).
    """
    warmup = int(warmup_ratio * total_steps)  # s_w: a whole number of steps, rounded down
    s = steps.double()  # logged after the schedule's step s: the rate the next step uses
    warm = s / max(1, warmup)
    progress = (s - warmup) / max(1, total_steps - warmup)
    cosine = 0.5 * (1 + torch.cos(torch.pi * progress))
    return lr * torch.where(s < warmup, warm, cosine.clamp(min=0))
