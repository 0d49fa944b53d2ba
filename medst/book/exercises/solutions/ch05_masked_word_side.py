import torch
import torch.nn.functional as F


def masked_word_side_loss(words, patches, weighting, word_mask, patch_mask, temperature=0.1):
    """Word side L_word of the modality-weighted local alignment on a padded batch (Method §5).

    words [B, W, d], patches [B, P, d] (L2-normalised); word_mask [B, W], patch_mask [B, P] bool (True = real);
    weighting: nn.MultiheadAttention(d, 1, batch_first=True), whose attention weights are ω. Returns a scalar.
    """
    scores = words @ patches.transpose(1, 2) / temperature  # [B, W, P]
    scores = scores.masked_fill(~patch_mask[:, None, :], float("-inf"))  # missing patches are no keys
    context = F.normalize(scores.softmax(dim=-1) @ patches, dim=-1)  # [B, W, d] c_i
    inter = F.normalize(words * context, dim=-1)  # [B, W, d] e_i
    real = word_mask.to(words.dtype)[..., None]  # [B, W, 1]
    query = (inter * real).sum(dim=1, keepdim=True) / real.sum(dim=1, keepdim=True)  # mean of the real words
    _, omega = weighting(query, inter, inter, key_padding_mask=~word_mask, need_weights=True)
    omega = omega[:, 0] / omega[:, 0].sum(dim=1, keepdim=True)  # [B, W], 0 on padding
    sim = words @ context.transpose(1, 2) / temperature  # [B, W, W] m_ik
    pair = word_mask[:, :, None] & word_mask[:, None, :]
    eye = torch.eye(sim.shape[1], dtype=torch.bool, device=sim.device)
    sim = sim.masked_fill(~(pair | eye), float("-inf"))  # a padded word's own row keeps its diagonal: CE = 0
    rows = -sim.log_softmax(dim=2).diagonal(dim1=1, dim2=2)  # [B, W] CE(m_i,:, i)
    cols = -sim.log_softmax(dim=1).diagonal(dim1=1, dim2=2)  # [B, W] CE(m_:,i, i)
    return ((omega * rows).sum(dim=1).mean() + (omega * cols).sum(dim=1).mean()) / 2
