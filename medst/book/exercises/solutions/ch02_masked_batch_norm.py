import torch


def masked_batch_norm(bn, x, mask):
    """BatchNorm over the real tokens only, as the local head normalises (Method §2.3).

    bn: a torch.nn.BatchNorm1d(C) (its mode, parameters and running statistics); x [B, T, C];
    mask [B, T] bool (True: a real token)  ->  y [B, T, C], zero at padding. In training mode the running
    statistics of bn are updated from the real tokens.
    """
    valid = mask.bool()[..., None].to(x.dtype)  # [B, T, 1]
    if bn.training:
        count = valid.sum()
        mean = (x * valid).sum(dim=(0, 1)) / count  # [C]: over real tokens only
        var = ((x - mean) ** 2 * valid).sum(dim=(0, 1)) / count  # biased, as BatchNorm normalises
        with torch.no_grad():
            bn.num_batches_tracked += 1
            m = bn.momentum if bn.momentum is not None else 1.0 / float(bn.num_batches_tracked)
            bn.running_mean.mul_(1 - m).add_(m * mean)
            bn.running_var.mul_(1 - m).add_(m * var * count / (count - 1))  # unbiased, as BatchNorm keeps
    else:
        mean, var = bn.running_mean, bn.running_var
    y = (x - mean) / torch.sqrt(var + bn.eps)
    if bn.affine:
        y = y * bn.weight + bn.bias
    return y * valid  # padding slots: zero
