import torch


def merge_words_max(hidden, input_ids, continuation, sep_token_id, attention_mask=None):
    """Max-pool the word-piece vectors of each word (Method §2.2 with max instead of sum).

    hidden [B, T, D], input_ids [B, T], continuation [V] bool (token id -> is a "##" piece),
    attention_mask [B, T] or None  ->  words [B, T-1, D]: word k in slot k, the element-wise max of its
    pieces' vectors; empty slots zero.
    """
    B, T, D = hidden.shape
    ids, pieces = input_ids[:, 1:], hidden[:, 1:]  # [B, T-1]: everything after [CLS]
    real = (ids == sep_token_id).long().cumsum(dim=1) == 0  # before the first [SEP]
    if attention_mask is not None:
        real = real & attention_mask[:, 1:].bool()
    starts = real & ~continuation.to(ids.device)[ids]  # pieces that open a word
    starts[:, 0] = real[:, 0]  # even a "##" piece right after [CLS] opens one
    slot = starts.long().cumsum(dim=1) - 1  # [B, T-1]: piece -> its word's slot
    slot = torch.where(real, slot, torch.full_like(slot, T - 1))  # other pieces -> a spare slot
    index = slot[..., None].expand(-1, -1, D)
    # include_self=False: the zeros the slots start from take no part in the max (a word's max may be < 0);
    # a slot that receives no piece keeps its zero
    words = hidden.new_zeros(B, T, D).scatter_reduce(1, index, pieces, reduce="amax", include_self=False)
    return words[:, : T - 1]
