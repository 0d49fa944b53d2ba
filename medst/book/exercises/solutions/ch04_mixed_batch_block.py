import torch


def mixed_batch_block(block, lateral_expert, x, has_lateral):
    """One MoVE block on a padded batch of studies with and without a lateral view, in one call (Method §3).

    x [B, 1 + 2N, D] = [CLS, N frontal, N lateral slots]; has_lateral [B] bool (the lateral slots of the other
    studies are padding). Returns [B, 1 + 2N, D], zeros in the lateral slots of the studies without a lateral.
    """
    n_frontal = 1 + (x.shape[1] - 1) // 2
    valid = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)  # [B, S] real tokens
    valid[:, n_frontal:] = has_lateral[:, None]
    keys = valid[:, None, None, :]  # [B, 1, 1, S]: no query attends to padding; every query row keeps [CLS]
    x = x + block.drop_path1(block.ls1(block.attn(block.norm1(x), attn_mask=keys)))
    front = block.ls2(block.mlp(block.norm2(x[:, :n_frontal])))  # [CLS] + frontal
    side = lateral_expert(x[:, n_frontal:])  # lateral slots (padding too: zeroed below)
    x = x + block.drop_path2(torch.cat([front, side], dim=1))
    return x * valid[..., None]
