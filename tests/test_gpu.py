"""What only a CUDA GPU can check: the single-GPU training path, bf16 autocast, fused AdamW and pinned batches,
agreement with the CPU, no host synchronisation inside a step, and torch.compile with padded view groups.

Skipped without CUDA. ``benchmarks/gpu_check.sh`` runs this file on a GPU machine, with pytest or, where pytest
is missing, with its own small runner (every test takes only ``tmp_path``). Set ``MEDST_GPU_SKIP_COMPILE=1`` to
leave out the compile test (it compiles a tiny model, about a minute).
"""

from __future__ import annotations

import copy
import functools
import itertools
import math
import os
import tempfile
import traceback
import warnings
from pathlib import Path

import torch

from medst.config import load_profile
from medst.data.dataset import Batch

try:
    import pytest
except ImportError:  # benchmarks/gpu_check.py runs this file without pytest too
    pytest = None
else:
    pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

TORCH_DIR = str(Path(torch.__file__).parent)
# transformers checks whether the attention mask has padding (masking_utils: padding_mask.all()); see
# tests/test_host_syncs.py. Every other synchronisation inside a step is a failure.
KNOWN_THIRD_PARTY = ("transformers/masking_utils.py",)


class Skipped(Exception):
    """A test that does not apply here (raised as pytest's skip when pytest runs the file)."""


def skip(reason: str) -> None:
    if pytest is not None:
        pytest.skip(reason)
    raise Skipped(reason)


@functools.cache
def prepared() -> Path:
    """A 60-patient phantom at 64 px, prepared with a 73 px cache (as tests/conftest.py, without the RSNA part,
    which needs pydicom)."""
    from medst.data.mimic import prepare
    from medst.phantom import synthesize

    root = Path(tempfile.mkdtemp(prefix="medst-gpu-test-"))
    synthesize(root / "phantom", n_patients=60, image_size=64, seed=3, workers=1, progress=False, n_rsna=0, n_covidx=0)
    prepare(root / "phantom" / "mimic-cxr-jpg", root / "prepared", cache_size=73, workers=1, progress=False)
    return root / "prepared"


def model_and_batch(*overrides: str, device: str = "cpu"):
    """A ci-sized Med-ST (no dropout) and a synthetic batch of 2 sequences and 4 singles (6 of 12 with a lateral)."""
    from medst.models.medst import build_medst
    from medst.train.bench import synthetic_batch, synthetic_tokenizer

    cfg = load_profile("ci", ["model.text.dropout=0.0", *overrides])
    torch.manual_seed(0)
    model = build_medst(cfg, synthetic_tokenizer(cfg.model.text.vocab_size)).to(device).train()
    return model, synthetic_batch(cfg, 2, 4, model.text.tokenizer, torch.device(device))


def test_trainer_on_one_gpu_with_bf16(tmp_path):
    from medst.train.loop import Trainer

    cfg = load_profile(
        "ci",
        [
            "train.steps=6",
            "train.log_every=3",
            "train.checkpoint_every=3",
            "train.precision=bf16",
            "train.group_bucket=4",
            "data.num_workers=2",
        ],
    )
    run = tmp_path / "run"
    trainer = Trainer.from_config(cfg, prepared(), run, device="cuda", progress=False)
    assert trainer.device.type == "cuda" and next(trainer.model.parameters()).is_cuda
    assert trainer.optimizer.defaults.get("fused") is True, "AdamW should be the fused one on a GPU"
    loader = trainer._loader()
    assert loader.pin_memory and loader.prefetch_factor == 4
    batch = next(iter(loader))
    assert batch.frontal.is_pinned(), "batches should come from pinned memory"
    assert batch.lateral.shape[0] % 4 == 0 or batch.lateral.shape[0] == batch.size, "laterals not padded"
    with trainer._autocast():
        out = trainer.forward(batch.to("cuda", non_blocking=True))
    assert out.loss.is_cuda and math.isfinite(float(out.loss))
    rows = trainer.fit()
    assert [r["step"] for r in rows] == list(range(1, 7))
    assert all(math.isfinite(r["loss"]) and r["pairs_per_s"] > 0 for r in rows)
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters()), "autocast must keep fp32 weights"
    assert (run / "model.safetensors").exists() and len((run / "metrics.csv").read_text().splitlines()) == 3


def test_gpu_forward_and_backward_match_the_cpu():
    cpu_model, batch = model_and_batch()
    gpu_model = copy.deepcopy(cpu_model).cuda()
    torch.backends.cudnn.allow_tf32, saved = False, torch.backends.cudnn.allow_tf32  # exact fp32 convolutions
    try:
        a, b = cpu_model(batch), gpu_model(batch.to("cuda"))
        a.loss.backward()
        b.loss.backward()
    finally:
        torch.backends.cudnn.allow_tf32 = saved
    for k in ("global", "local", "fmc"):
        assert float(b.terms[k]) == approx(float(a.terms[k]), 1e-3), k
    for (name, p), q in zip(cpu_model.named_parameters(), gpu_model.parameters()):
        if p.grad is not None and "vision.vit.blocks.0" in name:
            torch.testing.assert_close(q.grad.cpu(), p.grad, rtol=1e-2, atol=1e-3 * float(p.grad.abs().max()), msg=name)


def test_bf16_autocast_stays_close_to_fp32():
    model, batch = model_and_batch(device="cuda")
    with torch.no_grad():
        fp32 = model.eval()(batch)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            bf16 = model(batch)
    for k in ("global", "local"):
        assert float(bf16.terms[k]) == approx(float(fp32.terms[k]), 5e-2), k


def test_no_host_sync_inside_a_gpu_training_step(tmp_path):
    from medst.train.loop import Trainer

    cfg = load_profile("ci", ["train.steps=8", "train.log_every=8", "train.precision=bf16", "train.group_bucket=4"])
    trainer = Trainer.from_config(cfg, prepared(), tmp_path / "run", device="cuda", progress=False)
    batches = iter(list(itertools.islice(trainer.batches(), 3)))  # on the GPU already
    trainer.train_step(batches)  # lazy initialisation (cuBLAS handles, optimizer state)
    torch.cuda.synchronize()
    origins = []

    def record(message, category, filename, lineno, file=None, line=None):
        if "synchronizing" in str(message):
            outside = [
                f
                for f in traceback.extract_stack()[:-1]
                if not f.filename.startswith(TORCH_DIR) and f.filename != __file__
            ]
            origins.append(f"{outside[-1].filename}:{outside[-1].lineno}" if outside else f"{filename}:{lineno}")

    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = record
        torch.cuda.set_sync_debug_mode("warn")
        try:
            record_ = trainer.train_step(batches)
        finally:
            torch.cuda.set_sync_debug_mode(0)
    ours = [o for o in origins if not any(k in o for k in KNOWN_THIRD_PARTY)]
    print(f"synchronisations inside the step: {origins}")
    assert ours == [], f"the training step waits for the GPU at {ours}"
    assert math.isfinite(trainer.flush([record_])[0]["loss"])


def test_compile_with_padded_groups_compiles_once_per_bucket():
    if os.environ.get("MEDST_GPU_SKIP_COMPILE") == "1":
        skip("MEDST_GPU_SKIP_COMPILE=1")
    import torch._dynamo

    model, batch = model_and_batch("train.group_bucket=4", device="cuda")
    model.vision.group_bucket = 4
    eager = copy.deepcopy(model)
    compiled = torch.compile(model, dynamic=False)

    def with_laterals(n: int) -> Batch:
        """The batch with the first n studies holding a lateral, padded to a multiple of 4 rows."""
        has = torch.arange(batch.size, device="cuda") < n
        lateral = torch.randn(n, *batch.frontal.shape[1:], device="cuda")
        return Batch(**{**batch.__dict__, "has_lateral": has, "lateral": lateral}).pad_laterals(4)

    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    graphs = []
    for n in (5, 6, 7):  # one bucket (8 lateral rows), three lateral counts
        b = with_laterals(n)
        out = compiled(b)
        out.loss.backward()
        ref = eager(b)
        assert float(out.terms["global"]) == approx(float(ref.terms["global"]), 1e-3), n
        assert float(out.terms["local"]) == approx(float(ref.terms["local"]), 1e-3), n
        graphs.append(torch._dynamo.utils.counters["stats"]["unique_graphs"])
    assert graphs[0] > 0 and graphs[1] == graphs[0] == graphs[2], f"recompiled within one bucket: {graphs}"


def approx(value: float, rel: float):
    """pytest.approx where pytest is present, else a small stand-in."""
    if pytest is not None:
        return pytest.approx(value, rel=rel)

    class Approx:
        def __eq__(self, other):
            return abs(other - value) <= rel * abs(value)

        def __repr__(self):
            return f"{value} ± {rel:.0%}"

    return Approx()
