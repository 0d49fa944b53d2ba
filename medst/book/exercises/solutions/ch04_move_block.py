import torch


def move_block(block, lateral_expert, x, n_frontal):
    """One Mixture-of-View-Experts block (Method §3).

    block: a timm ViT Block (norm1, attn, ls1, drop_path1, norm2, mlp, ls2, drop_path2);
    lateral_expert: x_lateral [B, S_l, D] -> [B, S_l, D] (its own norm + MLP + layer scale);
    x [B, S, D] = [CLS, frontal tokens, lateral tokens]; the first n_frontal tokens are [CLS] + frontal.
    Returns [B, S, D].
    """
    x = x + block.drop_path1(block.ls1(block.attn(block.norm1(x))))  # one attention over both views
    front = block.ls2(block.mlp(block.norm2(x[:, :n_frontal])))  # frontal expert: [CLS] + frontal
    side = lateral_expert(x[:, n_frontal:])  # lateral expert
    return x + block.drop_path2(torch.cat([front, side], dim=1))
