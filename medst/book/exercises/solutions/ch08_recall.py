import torch


def shared_report_recall(similarity, report_ids, ks=(1, 5, 10)):
    """Image -> report recall@k, ties against the model, identical reports interchangeable (Method §8.5).

    similarity [n, n] (image i, report j), report_ids [n]: equal ids for word-for-word equal reports.
    Returns [len(ks)].
    """
    correct = report_ids[:, None] == report_ids[None, :]  # [n, n] every report that would do
    best = similarity.masked_fill(~correct, -torch.inf).amax(dim=1, keepdim=True)  # [n, 1] best correct score
    ranks = 1 + ((similarity >= best) & ~correct).sum(dim=1)  # ties count against the model
    return torch.stack([(ranks <= k).double().mean() for k in ks])
