import torch


def routed_block(block, lateral_expert, x, lateral):
    """One MoVE block with the feed-forward expert chosen per token (Method §3).

    block: a timm ViT Block (norm1, attn, ls1, drop_path1, norm2, mlp, ls2, drop_path2);
    lateral_expert: [B, S', D] -> [B, S', D] (norm + MLP + layer scale);
    x [B, S, D]; lateral [B, S] bool, True for the tokens of the lateral view. Returns [B, S, D].
    """
    x = x + block.drop_path1(block.ls1(block.attn(block.norm1(x))))  # one attention over all tokens
    front = block.ls2(block.mlp(block.norm2(x)))  # [B, S, D] frontal expert, on every token
    side = lateral_expert(x)  # [B, S, D] lateral expert, on every token
    ffn = torch.where(lateral[..., None], side, front)  # each token keeps its own expert's output
    return x + block.drop_path2(ffn)  # one branch per sample: one drop_path2 call
