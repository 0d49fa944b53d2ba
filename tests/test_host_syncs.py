"""No host synchronisation inside a training step: the host reads the device only at log steps.

On a GPU every ``.item()``, ``float(t)``, ``bool(t)`` (an ``if`` on a tensor), ``.tolist()``, ``.cpu()``, and every
operation whose output shape depends on the data (``nonzero``, boolean-mask indexing, ``masked_select``) makes
the host wait until the device has finished all queued work. This file counts them on a CPU with a
``TorchDispatchMode`` that sees each operation the step runs (plus the few tensor methods that bypass the
dispatcher), so CI checks what the GPU run depends on.
"""

from __future__ import annotations

import itertools
import traceback
from pathlib import Path

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from train_helpers import poison_loss_at

import medst.checks
from medst.config import load_profile
from medst.train.checkpoint import latest_checkpoint
from medst.train.loop import NonFiniteLoss, Trainer

TORCH_DIR = str(Path(torch.__file__).parent)
# Operations that need a tensor's value, or the size of a data-dependent result, on the host.
SYNC_OPS = {
    "_local_scalar_dense",
    "nonzero",
    "masked_select",
    "unique",
    "_unique2",
    "unique_consecutive",
    "unique_dim",
    "repeat_interleave",
}
INDEX_OPS = {"index", "index_put", "index_put_", "_index_put_impl_"}
# Syncs outside this repository that it cannot remove: transformers checks whether an attention mask has any
# padding (``padding_mask.all()`` in masking_utils) to skip it. Passing the text tower a 4-D mask avoids that.
KNOWN_THIRD_PARTY = ("transformers/masking_utils.py",)


class HostSyncs(TorchDispatchMode):
    """Records every host synchronisation (see the module docstring) with the code that asked for it.

    ``hits``: (operation, origin) with origin the innermost frame outside torch (``path:line``). Operations inside
    ``torch/optim`` are not counted: on a CPU the unfused AdamW keeps its step counters as host tensors, and on a
    GPU the training loop uses the fused AdamW, whose counters stay on the device; neither waits for it.
    """

    METHODS = ("tolist", "numpy", "cpu", "item")

    def __init__(self) -> None:
        super().__init__()
        self.hits: list[tuple[str, str]] = []
        self._saved: dict[str, object] = {}

    def _record(self, op: str) -> None:
        frames = [
            f
            for f in traceback.extract_stack()
            if not (f.filename == __file__ and f.name in ("_record", "counted", "__torch_dispatch__"))
        ]
        if any("/torch/optim/" in f.filename for f in frames):
            return
        outside = [f for f in frames if not f.filename.startswith(TORCH_DIR)]
        origin = outside[-1] if outside else frames[-1]
        self.hits.append((op, f"{origin.filename}:{origin.lineno}"))

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if name in SYNC_OPS or (
            name in INDEX_OPS
            and any(isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8) for i in (args[1] or ()))
        ):
            self._record(name)
        return func(*args, **(kwargs or {}))

    def __enter__(self):
        for name in self.METHODS:  # these read the data without (always) going through the dispatcher
            original = getattr(torch.Tensor, name)
            self._saved[name] = original

            def counted(tensor, *a, __name=name, __original=original, **kw):
                self._record(__name)
                return __original(tensor, *a, **kw)

            setattr(torch.Tensor, name, counted)
        return super().__enter__()

    def __exit__(self, *exc):
        for name, original in self._saved.items():
            setattr(torch.Tensor, name, original)
        return super().__exit__(*exc)

    def ours(self) -> list[tuple[str, str]]:
        return [h for h in self.hits if not any(k in h[1] for k in KNOWN_THIRD_PARTY)]


def test_the_counter_sees_every_kind_of_sync():
    x = torch.randn(5, 3)
    mask = x[:, 0] > 0
    with HostSyncs() as syncs:
        x.sum().item()
        float(x.sum())
        if torch.isfinite(x.sum()):
            pass
        x[mask]
        x.nonzero()
        x.tolist()
        x.cpu()
        y = x * 2 + 1  # ...and nothing else
        x[torch.tensor([0, 2])] = y[:2]
    ops = [op for op, _ in syncs.hits]
    assert ops == [
        "item",
        "_local_scalar_dense",
        "_local_scalar_dense",
        "_local_scalar_dense",
        "index",
        "nonzero",
        "tolist",
        "cpu",
    ], syncs.hits
    assert all(origin.startswith(__file__) for _, origin in syncs.hits)


def _trainer(prepared_dir, run, *overrides):
    cfg = load_profile("ci", ["train.steps=8", "train.log_every=4", *overrides])
    return Trainer.from_config(cfg, prepared_dir, run, device="cpu", progress=False)


@pytest.fixture
def as_on_a_gpu(monkeypatch):
    """Input checks take their accelerator branch (asserted on the device, see medst.checks) as on a GPU."""
    monkeypatch.setattr(medst.checks, "host_can_read", lambda t: False)


@pytest.mark.parametrize("bucket", [0, 4])
def test_a_training_step_never_waits_for_the_device(prepared_dir, tmp_path, bucket, as_on_a_gpu):
    trainer = _trainer(prepared_dir, tmp_path / "run", f"train.group_bucket={bucket}")
    # Batches are loaded first: the loader's work on host tensors is no device synchronisation.
    batches = iter(list(itertools.islice(trainer.batches(), 3)))
    trainer.train_step(batches)  # first step: lazy initialisation
    with HostSyncs() as syncs:
        record = trainer.train_step(batches)
    assert syncs.ours() == [], f"host syncs inside a training step: {syncs.ours()}"
    assert len(syncs.hits) <= 1, syncs.hits  # at most transformers' mask check (see KNOWN_THIRD_PARTY)
    # The values are read at the flush, all at once.
    with HostSyncs() as syncs:
        rows = trainer.flush([record])
    assert [op for op, _ in syncs.hits] == ["tolist"]
    assert rows[0]["step"] == 2 and {"loss", "global", "local", "grad_norm", "pairs_per_s"} <= set(rows[0])


def test_the_counter_fails_a_step_that_reads_the_loss(prepared_dir, tmp_path, as_on_a_gpu):
    trainer = _trainer(prepared_dir, tmp_path / "run")
    real_forward = trainer.forward

    def chatty(batch):  # what the loop used to do every step
        out = real_forward(batch)
        if not torch.isfinite(out.loss):
            raise RuntimeError
        return out

    trainer.forward = chatty
    batches = iter(list(itertools.islice(trainer.batches(), 2)))
    trainer.train_step(batches)
    with HostSyncs() as syncs:
        trainer.train_step(batches)
    assert [op for op, origin in syncs.ours() if origin.startswith(__file__)] == ["_local_scalar_dense"]


def test_a_non_finite_loss_between_log_steps_stops_at_the_next_flush(prepared_dir, tmp_path):
    # log every 5 steps, checkpoint every 2: the NaN of step 3 is found before step 4's checkpoint is written
    run = tmp_path / "run"
    trainer = _trainer(prepared_dir, run, "train.log_every=5", "train.checkpoint_every=2")
    poison_loss_at(trainer, 2)
    with pytest.raises(NonFiniteLoss, match="step 3: the loss is nan"):
        trainer.fit()
    assert trainer.step == 4
    assert latest_checkpoint(run).name == "step_0000002.pt"
    assert not (run / "checkpoints" / "step_0000004.pt").exists()
    assert not (run / "model.safetensors").exists()
