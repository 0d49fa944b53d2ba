import torch


def seeds_needed(with_scores, without_scores, max_seeds=100):
    """Seeds per variant at which the measured difference would pass the two-standard-error rule (chapter 9).

    with_scores [n_a], without_scores [n_b] (NaN: not scored). The means and the sample variances are taken as
    they are; with n seeds each the standard error is sqrt((var_a + var_b) / n). Returns the smallest n >= 2 with
    |difference| > 2 se, or 0 if none up to max_seeds (or a side has fewer than 2 scored seeds).
    """
    a = with_scores[~with_scores.isnan()].double()
    b = without_scores[~without_scores.isnan()].double()
    if len(a) < 2 or len(b) < 2:
        return 0
    difference = (a.mean() - b.mean()).abs()
    spread = a.var() + b.var()
    n = torch.arange(2, max_seeds + 1, dtype=torch.float64)
    passes = difference > 2 * torch.sqrt(spread / n)  # [max_seeds - 1], false then true
    return int(n[passes][0]) if passes.any() else 0
