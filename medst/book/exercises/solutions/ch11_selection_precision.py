import torch


def selection_precision(scores, truth, k):
    """Precision@k of text-guided slice selection (chapter 11) and its chance level.

    scores [V, S] how much each slab matches its volume's report; truth [V, S] bool, the slab shows a finding;
    k: slabs picked per volume (the k highest scores; equal scores: the lower slab index first).
    Returns (precision, chance), two scalars over the volumes with at least one true slab: precision = the share of
    their V·k picks that are true, chance = the mean over them of the share of true slabs.
    """
    found = truth.any(dim=1)  # [V] volumes with a finding; the others are left out
    scores, truth = scores[found], truth[found]
    picks = torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :k]  # [V', k] ties: lower index first
    precision = truth.gather(1, picks).double().mean()
    chance = truth.double().mean(dim=1).mean()
    return precision, chance
