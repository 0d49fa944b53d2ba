import torch
import torch.nn.functional as F

TEMPERATURE = 0.1  # τ_l of the local alignment


def word_weight_collapse(words, patches, weighting, steps=30, lr=5.0, entropy_weight=0.0):
    """The largest word weight while SGD trains the word-weighting attention alone (Method §5).

    words [B, W, d], patches [B, P, d] (L2-normalised, no padding, kept fixed); weighting:
    nn.MultiheadAttention(d, 1, batch_first=True), trained as a copy on L_word - entropy_weight * H(ω).
    Returns [steps + 1]: mean over pairs of max_i ω_i, before the first step and after each step.
    """
    trained = torch.nn.MultiheadAttention(weighting.embed_dim, 1, batch_first=True).to(words.dtype)
    trained.load_state_dict(weighting.state_dict())  # a copy: `weighting` itself stays as it was
    opt = torch.optim.SGD(trained.parameters(), lr=lr)
    targets = torch.arange(words.shape[1], device=words.device).expand(words.shape[0], -1)
    # words and patches are fixed, so the contexts and the cross-entropies CE_i are constants: only ω trains
    attn = (words @ patches.transpose(1, 2) / TEMPERATURE).softmax(dim=-1)  # [B, W, P] a_ij
    context = F.normalize(attn @ patches, dim=-1)  # [B, W, d] c_i
    inter = F.normalize(words * context, dim=-1)  # [B, W, d] e_i
    sim = words @ context.transpose(1, 2) / TEMPERATURE  # [B, W, W] m_ik
    rows = F.cross_entropy(sim.transpose(1, 2), targets, reduction="none")  # [B, W] CE(m_i,:, i)
    cols = F.cross_entropy(sim, targets, reduction="none")  # [B, W] CE(m_:,i, i)
    ce = (rows + cols) / 2  # L_word = mean over pairs of Σ_i ω_i CE_i
    largest = []
    for step in range(steps + 1):
        _, omega = trained(inter.mean(dim=1, keepdim=True), inter, inter, need_weights=True)
        omega = omega[:, 0] / omega[:, 0].sum(dim=1, keepdim=True)  # [B, W] ω, with the attention's gradient
        largest.append(omega.detach().max(dim=1).values.mean())
        if step == steps:
            break
        entropy = -(omega * omega.log()).sum(dim=1).mean()
        loss = (omega * ce).sum(dim=1).mean() - entropy_weight * entropy  # L_word - γ H(ω)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return torch.stack(largest)
