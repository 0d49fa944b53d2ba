import torch
import torch.nn.functional as F


def global_loss(img, txt, temperature=0.07):
    """Symmetric image-report InfoNCE (Method §4): img, txt [B, d] (L2-normalised) -> scalar."""
    logits = img @ txt.T / temperature  # [B, B]: s_ij = <v_i, t_j> / τ
    targets = torch.arange(len(img), device=img.device)  # pair i is the positive of row i and column i
    return F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets)
