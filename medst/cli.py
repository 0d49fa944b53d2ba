"""The ``medst`` command line: ``synth``, ``prepare``, ``pretrain``, ``evaluate``, ``bench``, ``convert``, ``grade``.

Each subcommand is a thin layer over a library function, so everything the command line does can also be
done from a notebook.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from medst.config import DEFAULT_GRADE_TIMEOUT

# Each subcommand imports its module when it runs: `medst --help` and `medst synth` then start in a fraction of a
# second instead of waiting for torch, timm and transformers.


def _synth(args: argparse.Namespace) -> None:
    from medst.phantom import synthesize

    summary = synthesize(
        args.out,
        n_patients=args.patients,
        image_size=args.image_size,
        seed=args.seed,
        workers=args.workers,
        progress=not args.quiet,
        ct_fraction=args.ct_fraction,
    )
    print(json.dumps(summary, indent=2, sort_keys=True, default=str))


def _prepare(args: argparse.Namespace) -> None:
    from medst.data.mimic import prepare

    summary = prepare(
        args.mimic_root,
        args.out,
        reports_dir=args.reports,
        cache_size=args.cache_size,
        sequence_length=args.sequence_length,
        min_words=args.min_words,
        workers=args.workers,
        progress=not args.quiet,
    )
    print(summary.format())


def _pretrain(args: argparse.Namespace) -> None:
    from medst.train.loop import pretrain_main

    pretrain_main(args)


def _evaluate(args: argparse.Namespace) -> None:
    from medst.eval.run import evaluate_main

    evaluate_main(args)


def _bench(args: argparse.Namespace) -> None:
    from medst.train.bench import bench_main

    bench_main(args)


def _convert(args: argparse.Namespace) -> None:
    from medst.convert import convert_main

    convert_main(args)


def _grade(args: argparse.Namespace) -> None:
    from medst.book.grade import grade_main

    grade_main(args)


def _grade_arguments(p: argparse.ArgumentParser) -> None:
    """The arguments of ``medst grade``."""
    p.add_argument("notebook", nargs="?", type=Path, help="one student's notebook (or use --class)")
    p.add_argument(
        "--class",
        dest="folder",
        type=Path,
        default=None,
        metavar="DIR",
        help="grade every *.ipynb under DIR, one student per notebook (name: its path under DIR)",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=Path("grades.csv"),
        help="with --class: the CSV to write, one row per notebook (default: grades.csv)",
    )
    p.add_argument("--json", action="store_true", help="print the result as JSON instead of a table")
    p.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_GRADE_TIMEOUT,
        metavar="S",
        help=f"seconds of wall clock per notebook before it is killed (default {DEFAULT_GRADE_TIMEOUT})",
    )
    p.add_argument("--jobs", type=int, default=1, metavar="N", help="with --class: notebooks run at a time (default 1)")
    p.add_argument("--profile", default="ci", help="the chapters' profile: ci (default), cpu or gpu")
    p.add_argument(
        "--data",
        type=Path,
        default=None,
        metavar="DIR",
        help="a chapter data folder (its data_dir, e.g. from a ci run of the book) copied for each notebook; "
        "default: each notebook makes its data in its own temporary folder",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="medst", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(
        dest="command", required=True, metavar="{synth,prepare,pretrain,evaluate,bench,convert,grade}"
    )

    p = sub.add_parser(
        "synth",
        help="write the phantom data set in the real data sets' formats",
        description="Generate synthetic longitudinal frontal/lateral studies with reports, written "
        "as MIMIC-CXR-JPG, MS-CXR-T, RSNA (DICOM) and COVIDx, plus ground truth.",
    )
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--patients", type=int, default=2000, help="number of MIMIC-part patients (default 2000)")
    p.add_argument("--image-size", type=int, default=128, help="image side in pixels (default 128)")
    p.add_argument("--seed", type=int, default=0, help="random seed; same seed gives byte-identical files")
    p.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument(
        "--ct-fraction",
        type=float,
        default=0.0,
        help="fraction of patients that also get a CT volume (NIfTI) of one study, with its finding slices "
        "(default 0: none)",
    )
    p.set_defaults(func=_synth)

    p = sub.add_parser(
        "prepare",
        help="index a MIMIC-CXR-JPG root (real or phantom) for pre-training",
        description="Report text, frontal/lateral pairing, time-ordered sequences and splits "
        "(Method §1), with a summary of what was kept and what was skipped and why.",
    )
    p.add_argument("--mimic-root", type=Path, required=True, help="folder with files/ and the metadata/split CSVs")
    p.add_argument("--out", type=Path, required=True, help="output folder for the index and cache")
    p.add_argument(
        "--reports",
        type=Path,
        default=None,
        help="reports folder or sectioned CSV (default: MIMIC_ROOT/mimic-cxr-reports)",
    )
    p.add_argument("--cache-size", type=int, default=256, help="long side of the resized image cache; 0 = no cache")
    p.add_argument("--sequence-length", type=int, default=4, help="studies per temporal sequence (L)")
    p.add_argument("--min-words", type=int, default=3, help="minimum word tokens in a usable report")
    p.add_argument("--workers", type=int, default=None, help="processes for image decoding")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_prepare)

    p = sub.add_parser(
        "pretrain",
        help="pre-train Med-ST (global + local + temporal objectives)",
        description="Pre-train on a prepared index. Run folder: metrics.csv, checkpoints, "
        "model.safetensors, config.json, tokenizer. Use torchrun for several processes.",
    )
    p.add_argument("--profile", default="cpu", help="ci, cpu, gpu or a YAML file")
    p.add_argument("--data", type=Path, required=True, help="prepared folder (medst prepare --out)")
    p.add_argument("--out", type=Path, required=True, help="run folder")
    p.add_argument("--resume", action="store_true", help="continue from the run folder's last checkpoint")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set train.steps=100 (repeatable)",
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    p.set_defaults(func=_pretrain)

    p = sub.add_parser(
        "evaluate",
        help="downstream evaluation of a pre-trained run",
        description="MS-CXR-T temporal image classification and sentence similarity, RSNA "
        "zero-shot, COVIDx probe/fine-tuning, retrieval, grounding.",
    )
    p.add_argument("--checkpoint", type=Path, required=True, help="run folder written by medst pretrain")
    p.add_argument("--data", type=Path, required=True, help="folder with mimic-cxr-jpg/, ms-cxr-t/, rsna/, covidx/")
    p.add_argument(
        "--task",
        default="all",
        help="temporal-image, temporal-text, rsna-zeroshot, covidx, retrieval, grounding or all",
    )
    p.add_argument("--out", type=Path, default=Path("results.json"), help="JSON file for the results")
    p.add_argument("--device", default="auto")
    p.add_argument(
        "--random-baseline",
        action="store_true",
        help="evaluate a randomly initialised model of the same architecture instead",
    )
    p.add_argument("--seed", type=int, default=0, help="seed for cross-validation splits and fine-tuning")
    p.add_argument("--finetune-epochs", type=int, default=None, help="COVIDx fine-tuning epochs (default: by profile)")
    p.add_argument(
        "--probe-split",
        default=None,
        metavar="SPLITS",
        help="progression-probe: comma-separated phantom splits whose patients are probed, e.g. test "
        "(default: all; the labels are never used in pre-training)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_evaluate)

    p = sub.add_parser(
        "bench",
        help="training throughput, MFU, peak memory, data loader speed",
        description="Time training steps of a profile's model on synthetic batches and the data "
        "loader on the phantom; prints one JSON object.",
    )
    p.add_argument("--profile", default="cpu", help="ci, cpu, gpu or a YAML file")
    p.add_argument("--batch-sizes", default=None, help="comma-separated sequences per batch to try (best is kept)")
    p.add_argument("--steps", type=int, default=10, help="timed steps after warm-up")
    p.add_argument("--data", type=Path, default=None, help="prepared folder for the loader benchmark")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--device", default="auto")
    p.add_argument("--json", action="store_true", help="print only the JSON object")
    p.set_defaults(func=_bench)

    p = sub.add_parser(
        "convert",
        help="turn a released Med-ST or MGCA checkpoint into a medst run folder",
        description="Read a released PyTorch Lightning checkpoint (safely: weights_only, no pickled "
        "code runs) and write model.safetensors, config.json and tokenizer/ for "
        "`medst evaluate` and load_run. Unused published parameters are listed as "
        "dropped; any other unknown or missing key is an error.",
    )
    p.add_argument(
        "--from",
        dest="source",
        required=True,
        choices=["medst-official", "mgca"],
        help="which release the checkpoint is",
    )
    p.add_argument("checkpoint", type=Path, help="the released .ckpt file")
    p.add_argument("--out", type=Path, required=True, help="run folder to write")
    p.add_argument(
        "--tokenizer",
        type=Path,
        default=None,
        help="local tokenizer folder with the release's vocabulary (Bio_ClinicalBERT); without it the "
        "config names emilyalsentzer/Bio_ClinicalBERT and load_run reads it from the hub",
    )
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="change the inferred config, e.g. --set model.text.num_heads=12 (repeatable)",
    )
    p.set_defaults(func=_convert)

    p = sub.add_parser(
        "grade",
        help="run students' notebooks and grade their exercises",
        description="Execute a student's chapter notebook (each in a child process with its own kernel, in a "
        "temporary folder, killed after --timeout) and grade each exercise from its checker: passed, failed, "
        "not done (the stub), error or not run, with its points (easy 1, medium 2, hard 3) and the checker's "
        "feedback. --class DIR grades every *.ipynb under DIR, one student per notebook, into a CSV.",
        epilog="examples: medst grade alice.ipynb | medst grade alice.ipynb --json | "
        "medst grade --class submissions/ --out grades.csv --jobs 2 --timeout 300",
    )
    _grade_arguments(p)
    p.set_defaults(func=_grade)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main(sys.argv[1:])
