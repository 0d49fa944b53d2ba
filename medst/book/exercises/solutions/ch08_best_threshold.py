import torch


def best_threshold(scores, labels):
    """The best accuracy of "paraphrase iff score >= t" and the smallest t that reaches it (Method §8.2).

    scores [n], labels [n] in {0, 1}. Returns (accuracy [], threshold []).
    """
    s, y = scores.double(), labels.long()
    above_all = torch.nextafter(s.max(), torch.tensor(torch.inf, dtype=s.dtype))  # call no pair a paraphrase
    candidates = torch.cat([torch.unique(s), above_all[None]])  # ascending: [K]
    predicted = (s[None, :] >= candidates[:, None]).long()  # [K, n]
    accuracy = (predicted == y[None, :]).double().mean(dim=1)  # [K]
    best = int(accuracy.argmax())  # the first of equally good ones: the smallest threshold
    return accuracy[best], candidates[best]
