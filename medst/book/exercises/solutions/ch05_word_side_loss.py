import torch
import torch.nn.functional as F


def word_side_loss(words, patches, weighting, temperature=0.1):
    """Word side L_word of the modality-weighted local alignment (Method §5), all tokens valid.

    words [B, W, d], patches [B, P, d] (L2-normalised); weighting: nn.MultiheadAttention(d, 1,
    batch_first=True) whose attention weights are the word weights ω. Returns a scalar.
    """
    attn = (words @ patches.transpose(1, 2) / temperature).softmax(dim=-1)  # [B, W, P] a_ij
    context = F.normalize(attn @ patches, dim=-1)  # [B, W, d] c_i
    inter = F.normalize(words * context, dim=-1)  # [B, W, d] e_i
    query = inter.mean(dim=1, keepdim=True)  # [B, 1, d] q
    _, omega = weighting(query, inter, inter, need_weights=True)  # [B, 1, W]
    omega = omega[:, 0] / omega[:, 0].sum(dim=1, keepdim=True)  # [B, W] ω
    sim = words @ context.transpose(1, 2) / temperature  # [B, W, W] m_ik
    targets = torch.arange(words.shape[1], device=words.device).expand(words.shape[0], -1)
    rows = F.cross_entropy(sim.transpose(1, 2), targets, reduction="none")  # CE(m_i,:, i)
    cols = F.cross_entropy(sim, targets, reduction="none")  # CE(m_:,i, i)
    return ((omega * rows).sum(dim=1).mean() + (omega * cols).sum(dim=1).mean()) / 2
