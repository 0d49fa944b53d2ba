import torch


def whole_word_mask(input_ids, attention_mask, word_start, special_ids, ratio, generator=None):
    """Whole-word masking of the report side of MPMA's paired masking (chapter 10).

    input_ids, attention_mask, word_start [B, T] (word_start: True where a token begins a word, False for a "##"
    continuation piece); special_ids [S]: ids never masked; ratio: r_T; generator: the torch.Generator to draw with.
    Returns [B, T] bool, True = masked: every piece of max(1, round(r_T n)) of the n ordinary words of each report
    (none when n = 0), the words drawn uniformly at random.
    """
    ordinary = attention_mask.bool() & ~torch.isin(input_ids, special_ids.to(input_ids.device))  # [B, T]
    starts = ordinary & word_start.bool()  # [B, T] the first piece of each ordinary word
    n = starts.sum(dim=1)  # [B] words per report
    k = torch.minimum(torch.floor(n.double() * ratio + 0.5).long().clamp_min(1), n)  # [B] halves rounded up
    noise = torch.rand(input_ids.shape, generator=generator, device=input_ids.device)
    noise = torch.where(starts, noise, torch.full_like(noise, 2.0))  # only first pieces take part in the draw
    drawn = noise.argsort(dim=1).argsort(dim=1) < k[:, None]  # [B, T] the first pieces of the k drawn words
    word = starts.cumsum(dim=1)  # [B, T] the number of the word each token belongs to (1, 2, ...)
    chosen = torch.zeros(word.shape[0], word.shape[1] + 1, dtype=torch.bool, device=word.device)
    chosen = chosen.scatter(1, torch.where(drawn, word, torch.zeros_like(word)), drawn)  # [B, T + 1] per word
    return ordinary & chosen.gather(1, word)  # every piece of a drawn word, and nothing else
