import torch


def move_extra_parameters(depth, dim, mlp_ratio=4.0, layer_scale=True):
    """Parameters that MoVE's lateral experts add to a timm ViT (Method §3).

    depth: number of blocks; dim: embedding size D; mlp_ratio: MLP hidden size / D; layer_scale: whether the
    blocks have a layer scale. Returns an int.
    """
    hidden = int(dim * mlp_ratio)
    # one expert per block, shaped like the block's feed-forward part (norm2, mlp, ls2); on the "meta" device
    # the layers have their shapes but no memory, so ViT-B's numbers cost nothing
    expert = torch.nn.Sequential(
        torch.nn.LayerNorm(dim, device="meta"),  # norm2
        torch.nn.Linear(dim, hidden, device="meta"),  # mlp.fc1
        torch.nn.Linear(hidden, dim, device="meta"),  # mlp.fc2
    )
    per_block = sum(p.numel() for p in expert.parameters())
    if layer_scale:
        per_block += dim  # the layer scale's gamma
    return depth * per_block  # the attention is shared by both views: nothing to add
