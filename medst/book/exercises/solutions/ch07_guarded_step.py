import torch


def guarded_step(model, batch, optimizer, step, clip=1.0, bf16=False):
    """One training step whose non-finite guard runs before the update (Method §7).

    model(batch) returns an output with .loss (a scalar). Returns (loss, grad_norm): the loss detached as float32
    [] and the total gradient norm before clipping []. Raises FloatingPointError naming ``step`` when the loss is
    NaN or infinite, before any parameter or optimiser state changes.
    """
    model.train()
    device_type = next(model.parameters()).device.type
    with torch.autocast(device_type, dtype=torch.bfloat16, enabled=bf16):
        loss = model(batch).loss
    if not torch.isfinite(loss).item():  # one read of the loss on the host, every step
        raise FloatingPointError(f"step {step}: the loss is {loss.item()}; the weights are left as they were")
    loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), clip or float("inf"))
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.detach().float(), grad_norm.detach().float()
