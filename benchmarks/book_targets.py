"""Does the book model learn? Its targets against random init of its architecture (chapter 7).

    medst synth    --out DATA --patients 2000 --image-size 64 --seed 0
    medst prepare  --mimic-root DATA/mimic-cxr-jpg --out PREPARED --cache-size 73
    medst pretrain --profile cpu --data PREPARED --out RUN
    python benchmarks/book_targets.py --run RUN --data DATA --out RUN/targets.json

The targets and how they are scored: :mod:`medst.eval.targets`. Prints a markdown table and writes the JSON
(values, thresholds, met or not).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from medst.eval.run import write_results
from medst.eval.targets import book_targets, targets_markdown


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, help="run folder of the book model (medst pretrain)")
    parser.add_argument("--data", required=True, help="the phantom it was trained on (medst synth --out)")
    parser.add_argument("--out", default=None, help="JSON file for the results")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random init and the probes' folds")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)
    rows = book_targets(args.run, args.data, seed=args.seed, device=args.device)
    print(targets_markdown(rows))
    if args.out:
        write_results(
            {"run": str(Path(args.run).resolve()), "data": str(Path(args.data).resolve()), "targets": rows}, args.out
        )


if __name__ == "__main__":
    main()
