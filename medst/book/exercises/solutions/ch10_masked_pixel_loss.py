import torch
from einops import rearrange

EPS = 1e-6  # added to each patch's variance under the square root


def masked_pixel_loss(pred, images, mask, patch, norm_pix=True):
    """L_MIM of MPMA (chapter 10) for any mask: the mean squared error over the pixels of the removed patches.

    pred [B, N, p²C] predicted patches; images [B, C, H, W]; mask [B, N] bool, True = removed (any number per
    image, possibly none); patch: p; norm_pix: compare with per-patch normalised targets.
    Returns a scalar: the mean over all removed patches of the batch of mean_pixels (pred - target)²; 0 when none.
    """
    target = rearrange(images, "b c (h p) (w q) -> b (h w) (p q c)", p=patch, q=patch)  # [B, N, p²C]
    if norm_pix:
        mean = target.mean(dim=-1, keepdim=True)
        var = target.var(dim=-1, keepdim=True, unbiased=False)
        target = (target - mean) / (var + EPS).sqrt()
    per_patch = (pred - target).pow(2).mean(dim=-1)  # [B, N]
    per_patch = torch.where(mask, per_patch, torch.zeros_like(per_patch))  # a kept patch enters nowhere (even NaN)
    return per_patch.sum() / mask.sum().clamp_min(1)
