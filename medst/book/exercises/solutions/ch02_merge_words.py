import torch


def merge_words(hidden, input_ids, continuation, sep_token_id, attention_mask=None):
    """Sum the word-piece vectors of each word (Method §2).

    hidden [B, T, D], input_ids [B, T], continuation [V] bool (token id -> is a "##" piece),
    attention_mask [B, T] or None  ->  words [B, T-1, D] (empty slots zero), word_mask [B, T-1] bool.
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
    words = hidden.new_zeros(B, T, D).scatter_add(1, slot[..., None].expand(-1, -1, D), pieces)
    word_mask = torch.arange(T - 1, device=ids.device) < starts.sum(dim=1, keepdim=True)
    return words[:, : T - 1], word_mask
