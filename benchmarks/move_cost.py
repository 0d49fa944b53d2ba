"""Cost of missing laterals in MoVE (Method §3.4): skip them (medst) vs feed zero images.

A batch in which half the studies lack a lateral is run forward + backward twice:
  skip: medst's MoVE; studies without a lateral run with 1 + N tokens only;
  zero: every study runs with 1 + 2N tokens, a zero image standing in for each missing
        lateral (the published approach, here without its key mask, so a lower bound
        on its cost).
Times are medians over interleaved steps (`best_ratio` uses the fastest step of each).
Prints one JSON line. Examples:
    python benchmarks/move_cost.py                         # ViT-S/16 at 224 on CPU
    python benchmarks/move_cost.py --tiny                  # seconds, for a quick check
    python benchmarks/move_cost.py --device cuda --batch 64 --amp
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch

from medst.models.vision import create_move


def step(model, frontal, lateral, has_lateral, amp: bool) -> None:
    with torch.autocast(frontal.device.type, dtype=torch.bfloat16, enabled=amp):
        out = model(frontal, lateral, has_lateral)
        loss = out.cls.float().square().mean() + (out.patches.float() * out.patch_mask[..., None]).square().mean()
    loss.backward()
    model.zero_grad(set_to_none=True)


def timed_pair(fns, device: torch.device, warmup: int, steps: int) -> list[list[float]]:
    """Seconds per call of each fn, the fns interleaved step by step (fair on a shared machine)."""
    for _ in range(warmup):
        for fn in fns:
            fn()
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(steps):
        for fn, out in zip(fns, times):
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize()
            out.append(time.perf_counter() - t0)
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="vit_small_patch16_224")
    ap.add_argument("--img-size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--amp", action="store_true", help="bf16 autocast")
    ap.add_argument("--tiny", action="store_true", help="a tiny ViT at 64 px (quick check)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    device = torch.device(args.device)
    kwargs = dict(img_size=args.img_size)
    if args.tiny:
        kwargs = dict(img_size=64, patch_size=8, embed_dim=64, depth=2, num_heads=2)
    torch.manual_seed(0)
    model = create_move(args.model, **kwargs).to(device).train()
    size = kwargs["img_size"]
    B = args.batch
    frontal = torch.randn(B, 3, size, size, device=device)
    lateral = torch.randn(B, 3, size, size, device=device)
    has = torch.arange(B, device=device) % 2 == 0  # half the studies have a lateral
    zero_filled = torch.where(has[:, None, None, None], lateral, torch.zeros_like(lateral))

    skip, zero = timed_pair(
        [
            lambda: step(model, frontal, lateral[has], has, args.amp),
            lambda: step(model, frontal, zero_filled, None, args.amp),
        ],
        device,
        args.warmup,
        args.steps,
    )
    skip_s, zero_s = statistics.median(skip), statistics.median(zero)
    n = model.num_patches
    print(
        json.dumps(
            {
                "benchmark": "move_cost",
                "model": args.model if not args.tiny else "tiny",
                "img_size": size,
                "batch": B,
                "with_lateral": int(has.sum()),
                "tokens_skip": int(has.sum()) * (1 + 2 * n) + int((~has).sum()) * (1 + n),
                "tokens_zero": B * (1 + 2 * n),
                "skip_ms": round(skip_s * 1e3, 1),
                "zero_ms": round(zero_s * 1e3, 1),
                "ratio_skip_over_zero": round(skip_s / zero_s, 3),
                "best_ratio": round(min(skip) / min(zero), 3),
                "steps": args.steps,
                "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                "threads": torch.get_num_threads(),
                "cpu": platform.processor() or platform.machine(),
                "amp": args.amp,
                "torch": torch.__version__,
            }
        )
    )


if __name__ == "__main__":
    main()
