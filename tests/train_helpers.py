"""Helpers shared by the training tests."""

from __future__ import annotations

from medst.train import loop


def poison_loss_at(trainer: loop.Trainer, step: int) -> None:
    """Make ``trainer``'s loss NaN on the step that starts when ``trainer.step == step``."""
    real_forward = trainer.forward

    def poisoned(batch):
        out = real_forward(batch)
        if trainer.step == step:
            out.loss = out.loss * float("nan")
        return out

    trainer.forward = poisoned


def count_fits(monkeypatch) -> list[int]:
    """Record ``train.steps`` of every ``Trainer.fit`` call (which still trains); returns the growing list."""
    calls: list[int] = []
    real_fit = loop.Trainer.fit

    def counting_fit(self):
        calls.append(self.cfg.train.steps)
        return real_fit(self)

    monkeypatch.setattr(loop.Trainer, "fit", counting_fit)
    return calls
