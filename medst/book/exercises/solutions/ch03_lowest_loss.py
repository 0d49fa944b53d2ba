import torch


def lowest_global_loss(batch_size, temperature):
    """The smallest value the global loss (Method §4) can take at this temperature, for batch_size pairs of
    L2-normalised image and report embeddings in d >= batch_size - 1 dimensions."""
    B = batch_size
    if B == 1:
        return torch.tensor(0.0, dtype=torch.float64)  # no negatives
    # Every image on its own report, <v_i, t_i> = 1. The B^2 cosines of B unit vectors sum to ||sum_i t_i||^2 >= 0,
    # so the mean cosine of two different ones is >= -1 / (B - 1); log-sum-exp is convex, so equal negatives
    # are best: the vertices of a regular simplex, <v_i, t_j> = -1 / (B - 1) for every i != j.
    positive = torch.tensor(1.0, dtype=torch.float64) / temperature
    negative = -1.0 / ((B - 1) * temperature)
    one_direction = torch.log(1 + (B - 1) * torch.exp(negative - positive))  # -log softmax of the positive
    return 2 * one_direction  # the same for report -> images
