"""Batched temporal loss vs a per-sequence Python loop (forward + backward).

The loop computes the same L_temporal one sequence at a time (each call on a
[1, L, d] slice, the results averaged), the way a per-sequence
implementation walks over S; the batched form is
:func:`medst.losses.temporal_loss` on [S, L, d] at once.

    python benchmarks/temporal_loss.py                 # S=64, L=4, d=128 on CPU
    python benchmarks/temporal_loss.py --device cuda

Prints one JSON object: median milliseconds per forward + backward of both
forms, their ratio and the largest difference of loss and gradients.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch
import torch.nn.functional as F
from tqdm import tqdm

from medst.losses import temporal_loss


def looped_temporal_loss(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Per-sequence loop: u, v [S, L, d] -> scalar, equal to ``temporal_loss(u, v)``."""
    return torch.stack([temporal_loss(u[i : i + 1], v[i : i + 1]) for i in range(u.shape[0])]).mean()


def step(loss_fn, u: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    u = u.detach().requires_grad_()
    v = v.detach().requires_grad_()
    loss = loss_fn(u, v)
    loss.backward()
    return loss.detach(), u.grad, v.grad


def timed(loss_fn, u, v, repeats: int, warmup: int, label: str) -> list[float]:
    sync = torch.cuda.synchronize if u.is_cuda else (lambda: None)
    for _ in range(warmup):
        step(loss_fn, u, v)
    times = []
    for _ in tqdm(range(repeats), desc=label, leave=False):
        sync()
        start = time.perf_counter()
        step(loss_fn, u, v)
        sync()
        times.append((time.perf_counter() - start) * 1e3)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sequences", type=int, default=64)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    generator = torch.Generator().manual_seed(0)
    shape = (args.sequences, args.steps, args.dim)
    u = F.normalize(torch.randn(shape, generator=generator), dim=-1).to(device)
    v = F.normalize(u.cpu() + 0.5 * torch.randn(shape, generator=generator), dim=-1).to(device)

    batched = step(temporal_loss, u, v)
    looped = step(looped_temporal_loss, u, v)
    max_diff = max((a - b).abs().max().item() for a, b in zip(batched, looped))

    t_batched = statistics.median(timed(temporal_loss, u, v, args.repeats, args.warmup, "batched"))
    t_looped = statistics.median(timed(looped_temporal_loss, u, v, args.repeats, args.warmup, "loop"))
    print(
        json.dumps(
            {
                "benchmark": "temporal_loss forward+backward",
                "S": args.sequences,
                "L": args.steps,
                "d": args.dim,
                "device": torch.cuda.get_device_name(device)
                if device.type == "cuda"
                else platform.processor() or "cpu",
                "threads": torch.get_num_threads(),
                "torch": torch.__version__,
                "batched_ms": round(t_batched, 3),
                "loop_ms": round(t_looped, 3),
                "speedup": round(t_looped / t_batched, 2),
                "max_abs_diff": max_diff,
            }
        )
    )


if __name__ == "__main__":
    main()
