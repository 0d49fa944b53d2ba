import torch
from einops import rearrange


def volume_tokens_by_hand(volumes, weight, bias, pos_depth, pos_plane, patch):
    """UniMedI's 3-D patch embedding (chapter 11) without a convolution: cut into patches, one matrix product.

    volumes [V, C, D, H, W]; weight [D_v, C, p_d, p_h, p_w] and bias [D_v] (a Conv3d's, kernel = stride = patch);
    pos_depth [S_max, D_v] one entry per slab; pos_plane [G_h, G_w, D_v] one per in-plane position;
    patch (p_d, p_h, p_w). Returns tokens [V, S·P, D_v], S = D / p_d slabs, P = (H / p_h)·(W / p_w), slab-major
    (slab, then row, then column); token (s, i, j) gets pos_depth[s] + pos_plane[i, j].
    """
    p_d, p_h, p_w = patch
    s, h, w = volumes.shape[2] // p_d, volumes.shape[3] // p_h, volumes.shape[4] // p_w
    cubes = rearrange(volumes, "v c (s a) (h b) (w e) -> v (s h w) (c a b e)", a=p_d, b=p_h, e=p_w)  # [V, S·P, K]
    kernel = rearrange(weight, "d c a b e -> d (c a b e)")  # [D_v, K], flattened in the same order as a patch
    tokens = torch.einsum("vtk,dk->vtd", cubes, kernel) + bias  # [V, S·P, D_v]
    positions = pos_depth[:s, None, None] + pos_plane[None, :h, :w]  # [S, h, w, D_v]: the first slabs, top-left
    return tokens + rearrange(positions, "s h w d -> (s h w) d")
