"""The chapters' shared runs: the book model is trained once and loaded afterwards."""

from __future__ import annotations

import pytest
from train_helpers import count_fits

from medst.book import Chapter, setup
from medst.book.build import chapters, execution_order
from medst.train import loop


@pytest.fixture
def ctx(tmp_path, prepared_dir, monkeypatch):
    """A ci chapter context on the session's small prepared phantom, with a 2-step profile."""
    monkeypatch.setattr(Chapter, "prepared_dir", property(lambda self: prepared_dir))
    chapter = setup("ci", tmp_path / "data", 0, "cpu")
    chapter.cfg = chapter.cfg.override("train.steps=2", "train.checkpoint_every=1", "train.log_every=1")
    return chapter


def test_book_model_is_loaded_not_retrained(ctx, monkeypatch):
    run = ctx.book_model(progress=False)
    weights = run / "model.safetensors"
    assert weights.exists() and (run / "metrics.csv").exists()
    stamp = weights.stat().st_mtime_ns

    def refuse(self):
        raise AssertionError("the book model was retrained although it exists")

    monkeypatch.setattr(loop.Trainer, "fit", refuse)
    assert ctx.book_model(progress=False) == run  # loaded: fit() is never called
    assert weights.stat().st_mtime_ns == stamp


def test_book_model_of_another_configuration_is_retrained(ctx, monkeypatch):
    run = ctx.book_model(progress=False)
    calls = count_fits(monkeypatch)
    ctx.cfg = ctx.cfg.override("train.steps=3")
    assert ctx.book_model(progress=False) == run
    assert calls == [3]
    assert ctx.variant_run("book", max_steps=2, progress=False) == run  # a capped run is a different one
    assert calls == [3, 2]


def test_chapter_7_executes_before_the_chapters_that_load_its_model():
    order = [n.stem for n in execution_order(chapters())]
    assert order.index("07_pretraining") < min(
        order.index(c) for c in ("04_move", "05_local_alignment", "06_temporal", "08_evaluation", "09_ablations")
    )
    assert sorted(order) == sorted(n.stem for n in chapters())


def _ship(ctx, tmp_path, monkeypatch):
    """Train the 2-step book model elsewhere and commit it as the profile's shipped model."""
    from medst.train import shipped

    trained = ctx.variant_run("elsewhere", progress=False)
    root = tmp_path / "models"
    manifest = shipped.package(trained, root / "book-ci", command="medst pretrain --profile ci ...")
    monkeypatch.setattr(shipped, "SHIPPED_DIR", root)
    return root / "book-ci", manifest


def test_shipped_book_model_is_installed_not_trained(ctx, tmp_path, monkeypatch):
    folder, manifest = _ship(ctx, tmp_path, monkeypatch)
    assert {"model.safetensors", "config.json", "metrics.csv", "tokenizer/tokenizer.json", "checkpoints/latest"} <= set(
        manifest["sha256"]
    )

    def refuse(self):
        raise AssertionError("trained although a committed book model matches")

    monkeypatch.setattr(loop.Trainer, "fit", refuse)
    run = ctx.book_model(progress=False)
    assert (run / "model.safetensors").read_bytes() == (folder / "model.safetensors").read_bytes()
    from medst.train.checkpoint import latest_checkpoint

    assert latest_checkpoint(run) is not None  # chapter 7 resumes a copy of it


def test_changed_shipped_model_is_refused_with_the_file_named(ctx, tmp_path, monkeypatch):
    from medst.train.shipped import ShippedModelError

    folder, _ = _ship(ctx, tmp_path, monkeypatch)
    with open(folder / "model.safetensors", "r+b") as f:
        f.seek(-4, 2)
        f.write(b"\x00\x01\x02\x03")
    with pytest.raises(ShippedModelError, match="model.safetensors"):
        ctx.book_model(progress=False)


def test_shipped_model_of_another_configuration_or_retrain_trains(ctx, tmp_path, monkeypatch):
    folder, _ = _ship(ctx, tmp_path, monkeypatch)
    calls = count_fits(monkeypatch)
    ctx.book_model(progress=False, retrain=True)
    assert calls == [2]
    ctx.cfg = ctx.cfg.override("train.steps=3")
    ctx.book_model(progress=False)
    assert calls == [2, 3]


def test_run_written_before_a_config_key_existed_is_still_loaded(ctx, monkeypatch):
    import json

    run = ctx.book_model(progress=False)
    saved = json.loads((run / "config.json").read_text())
    del saved["model"]["text"]["position_ids"]  # as a run written before the key was added
    (run / "config.json").write_text(json.dumps(saved))

    def refuse(self):
        raise AssertionError("retrained a run whose config only lacks a key at its default")

    monkeypatch.setattr(loop.Trainer, "fit", refuse)
    assert ctx.book_model(progress=False) == run
    saved["model"]["text"]["position_ids"] = "zeros"  # a real difference still counts
    (run / "config.json").write_text(json.dumps(saved))
    with pytest.raises(AssertionError, match="retrained"):
        ctx.book_model(progress=False)
