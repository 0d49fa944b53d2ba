import torch.nn.functional as F


def patient_infonce(img, txt, patient, temperature=0.07):
    """The global InfoNCE (Method §4) with every study of the same patient a positive.

    img, txt [B, d] (L2-normalised), patient [B] (patient id of each pair), temperature: τ  ->  scalar.
    """
    logits = img @ txt.T / temperature  # [B, B]
    same = (patient[:, None] == patient[None, :]).to(logits.dtype)  # [B, B]: the positives of each row
    targets = same / same.sum(dim=1, keepdim=True)  # row i: 1 / |P(i)| on each positive
    # soft-target cross-entropy: -mean over positives of log softmax; `same` is symmetric, so the columns
    # (report -> images) have the same targets
    return F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets)
