import torch.nn.functional as F


def zero_shot_log_probs(images, prompts, prompt_mask, temperature=0.1):
    """Zero-shot classification over C classes with prompt ensembles (Method §8.3).

    images [N, d], prompts [C, P, d] (not normalised), prompt_mask [C, P] True for a real prompt.
    Returns [N, C] log-probabilities: softmax over the classes of cos(v, t_c) / temperature.
    """
    weight = prompt_mask.to(prompts.dtype)[..., None]  # [C, P, 1]: 0 for padding
    mean = (F.normalize(prompts, dim=-1) * weight).sum(dim=1) / weight.sum(dim=1)  # [C, d]
    classes = F.normalize(mean, dim=-1)  # one unit vector per class: its prompt ensemble
    logits = F.normalize(images, dim=-1) @ classes.T / temperature  # [N, C] cosines / T
    return F.log_softmax(logits, dim=1)
