import torch


def move_tokens(image_size, patch_size, has_lateral):
    """What the image tower runs for one batch of studies (Method §3.1, §3.4).

    image_size: int or (height, width), multiples of patch_size; has_lateral [B] bool  ->  (tokens medst,
    tokens published, attention pairs medst, attention pairs published): tokens summed over the studies, and
    the query-key pairs one self-attention layer scores (each study attends within its own sequence).
    """
    height, width = (image_size, image_size) if isinstance(image_size, int) else image_size
    n = (height // patch_size) * (width // patch_size)  # N patches per view
    ours = 1 + n + n * has_lateral.long()  # [B]: [CLS] + N frontal (+ N lateral only where there is one)
    published = torch.full_like(ours, 1 + 2 * n)  # a zero image stands in for every missing lateral
    return ours.sum(), published.sum(), (ours**2).sum(), (published**2).sum()
