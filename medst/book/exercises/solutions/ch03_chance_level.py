import torch


def chance_level(batch_size, processes=1):
    """The global loss (Method §4) of towers that score every image-report pair alike, as each process has it.

    batch_size: B pairs per process; processes: R (medst gathers every process's embeddings)  ->  the loss.
    """
    candidates = torch.tensor(float(batch_size * processes), dtype=torch.float64)  # a row: softmax over R·B
    return 2 * torch.log(candidates)  # -log(1 / RB) for image -> reports, the same for report -> images
