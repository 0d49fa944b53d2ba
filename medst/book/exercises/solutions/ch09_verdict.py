import torch


def verdict(with_scores, without_scores, noise_floor=0.02):
    """The verdict of one ablation comparison by the two-standard-error rule (chapter 9).

    with_scores [n_a], without_scores [n_b]: per-seed scores, NaN for a seed not scored.
    Returns (difference [], margin [], verdict []: +1 helped, 0 no clear difference, -1 hurt).
    """
    a = with_scores[~with_scores.isnan()].double()  # the scored seeds only
    b = without_scores[~without_scores.isnan()].double()
    difference = a.mean() - b.mean()
    if len(a) > 1 and len(b) > 1:
        se = torch.sqrt(a.var() / len(a) + b.var() / len(b))  # sample variances (n - 1)
        margin = 2 * se
    else:  # one seed: no error bar
        margin = torch.tensor(noise_floor, dtype=torch.float64)
    code = 1 if difference > margin else -1 if difference < -margin else 0
    return difference, margin, torch.tensor(code)
