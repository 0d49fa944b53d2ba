import torch

from medst.ablation import ablation_verdicts


def flipped_verdicts(table):
    """The components whose verdict changes when a difference must exceed one standard error instead of two.

    table: a per-run ablation table (read_ablation). Returns a list of component names.
    """
    rows = ablation_verdicts(table)
    difference = torch.tensor(rows["difference"].to_numpy(float))
    se = torch.tensor(rows["se"].to_numpy(float))  # NaN where a side has one seed: no error bar

    def verdicts(margin):  # +1 helped, 0 no clear difference, -1 hurt; NaN margins compare False: 0
        return (difference > margin).long() - (difference < -margin).long()

    changed = (verdicts(2 * se) != verdicts(se)) & ~se.isnan()
    return [component for component, flip in zip(rows["component"], changed.tolist()) if flip]
