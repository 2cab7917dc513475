import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from stylexlib.classifier.model import (ClassifierError, ClassifierWrapper, SmallCNN, build_classifier,
                                        check_classifier, load_trained_classifier, load_user_classifier,
                                        save_classifier)
from stylexlib.classifier.predict import classify
from stylexlib.classifier.training import evaluate, train_classifier
from stylexlib.core.config import ClassifierConfig
from stylexlib.data import ImageDataset, random_split


@pytest.mark.parametrize("resolution", [16, 32, 64])
def test_small_cnn_maps_images_to_logits(resolution: int) -> None:
    model = build_classifier(3, resolution, width=8)
    assert model(torch.zeros(2, 3, resolution, resolution)).shape == (2, 3)


def test_classify_batches_and_accepts_uint8_or_float_images() -> None:
    torch.manual_seed(0)
    model = build_classifier(3, 16, width=4).eval()
    images = torch.randint(0, 256, (37, 3, 16, 16), dtype=torch.uint8)
    as_float = images.float() / 127.5 - 1
    with torch.no_grad():
        whole = model(as_float)
    logits = classify(model, images, batch_size=8)  # 5 batches, the last one short
    assert logits.shape == (37, 3) and logits.dtype == torch.float32 and not logits.requires_grad
    torch.testing.assert_close(logits, whole, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(classify(model, as_float, batch_size=256), whole, rtol=1e-5, atol=1e-5)
    assert classify(model, images[:0]).numel() == 0


def test_wrapper_resizes_and_normalises() -> None:
    seen = {}

    class Probe(nn.Module):
        def forward(self, x):
            seen["x"] = x
            return x.mean((2, 3))[:, :2]

    wrapper = ClassifierWrapper(Probe(), input_size=8, mean=[0.5, 0.5, 0.5], std=[0.25, 0.25, 0.25])
    wrapper(torch.ones(1, 3, 32, 32))  # +1 in [-1, 1] is 1.0 in [0, 1] -> (1 - 0.5) / 0.25 = 2
    assert seen["x"].shape == (1, 3, 8, 8)
    assert torch.allclose(seen["x"], torch.full_like(seen["x"], 2.0))
    with pytest.raises(ClassifierError, match="mean and classifier.std"):
        ClassifierWrapper(Probe(), mean=[0.5])


def test_torchscript_and_factory_sources(tmp_path: Path, monkeypatch) -> None:
    net = SmallCNN(2, 16, width=4).eval()
    path = tmp_path / "model.ts"
    with pytest.warns(FutureWarning):  # TorchScript is deprecated, still the most common export
        torch.jit.script(net).save(str(path))
    x = torch.randn(3, 3, 16, 16)
    loaded = load_user_classifier(str(path))
    assert torch.allclose(loaded(x), net(x), atol=1e-6)

    (tmp_path / "my_models.py").write_text(
        "from stylexlib.classifier.model import SmallCNN\n"
        "def make():\n    return SmallCNN(2, 16, width=4)\n"
        "def not_a_model():\n    return 3\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    assert load_user_classifier("my_models:make")(x).shape == (3, 2)
    with pytest.raises(ClassifierError, match="not an nn.Module"):
        load_user_classifier("my_models:not_a_model")
    with pytest.raises(ClassifierError, match="cannot import 'nope'"):
        load_user_classifier("my_models:nope")
    sys.modules.pop("my_models", None)


def test_bad_user_classifier_files(tmp_path: Path) -> None:
    with pytest.raises(ClassifierError, match="no such file"):
        load_user_classifier(str(tmp_path / "missing.ts"))
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a model")
    with pytest.raises(ClassifierError, match="not a TorchScript file"):
        load_user_classifier(str(junk))


def test_check_classifier_reports_shape_mismatch() -> None:
    model = build_classifier(3, 16, width=4)
    check_classifier(model, 3, 16)
    with pytest.raises(ClassifierError, match=r"expected logits of shape \(2, 2\)"):
        check_classifier(model, 2, 16)


def _colour_dataset(n: int = 400, resolution: int = 16) -> ImageDataset:
    """Two classes that differ only by the red channel's brightness, plus noise."""
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 2, (n,), generator=g)
    images = torch.randint(0, 120, (n, 3, resolution, resolution), generator=g, dtype=torch.int64)
    images[:, 0] += labels.view(-1, 1, 1) * 120
    return ImageDataset(images.to(torch.uint8), labels, ["dark", "red"], random_split(n, 0.2, 0.1, 0))


def test_training_learns_and_saves(tmp_path: Path) -> None:
    data = _colour_dataset()
    model = build_classifier(2, 16, width=8)
    cfg = ClassifierConfig(epochs=3, batch_size=32, lr=3e-3)
    history = train_classifier(model, data, cfg)
    assert history[-1]["val_accuracy"] >= 0.95
    path = save_classifier(tmp_path / "c.pt", model, data.class_names)
    loaded, names = load_trained_classifier(path)
    x, y = data.tensors("val")
    assert names == ["dark", "red"]
    assert torch.allclose(loaded(x), model.eval()(x), atol=1e-5)
    result = evaluate(loaded, data.images, data.labels, names)
    assert result.confusion().sum() == len(data) and np.trace(result.confusion()) / len(data) == result.accuracy
    ece, _, _, count = result.calibration()
    assert 0 <= ece <= 1 and count.sum() == len(data)


def test_training_resumes_the_same_trajectory(tmp_path: Path, monkeypatch) -> None:
    import stylexlib.classifier.training as classify

    data = _colour_dataset(200)
    cfg = ClassifierConfig(epochs=2, batch_size=32, augment=True)
    torch.manual_seed(1)
    start = build_classifier(2, 16, width=4).state_dict()

    def fresh() -> ClassifierWrapper:
        model = build_classifier(2, 16, width=4)
        model.load_state_dict(start)
        return model

    full = fresh()
    train_classifier(full, data, cfg)

    real_evaluate, calls = classify.evaluate, []

    def interrupt_in_epoch_two(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_evaluate(*args, **kwargs)

    ckpt = tmp_path / "state.pt"
    interrupted = fresh()
    monkeypatch.setattr(classify, "evaluate", interrupt_in_epoch_two)
    with pytest.raises(KeyboardInterrupt):
        train_classifier(interrupted, data, cfg, checkpoint=ckpt)
    monkeypatch.setattr(classify, "evaluate", real_evaluate)
    torch.manual_seed(123)  # whatever happened in between must not matter
    resumed = fresh()
    history = train_classifier(resumed, data, cfg, checkpoint=ckpt)
    assert [h["epoch"] for h in history] == [1, 2]
    for a, b in zip(full.state_dict().values(), resumed.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), atol=1e-6)


class RedFirst(nn.Module):
    """A user's model whose output 0 is 'red' and output 1 is 'dark' (not the data's sorted order)."""

    def forward(self, x):
        red = x[:, 0].mean(dim=(1, 2)) - x[:, 1:].mean(dim=(1, 2, 3)) - 0.47
        return torch.stack([red, -red], dim=1) * 10


class NaNWhenRed(nn.Module):
    """Finite logits on the all-zeros shape probe and on dark images, NaN (a log of a negative number) on red ones."""

    def forward(self, x):
        red = x[:, 0].mean(dim=(1, 2)) - x[:, 1:].mean(dim=(1, 2, 3)) - 0.47
        return torch.stack([torch.log(-red), red], dim=1)


def _user_run(tmp_path: Path, *overrides: str, model: nn.Module | None = None):
    from stylexlib.core.config import load_config
    from stylexlib.core.run import Run

    path = tmp_path / "red_first.ts"
    with pytest.warns(FutureWarning):
        torch.jit.script(model or RedFirst()).save(str(path))
    return Run(tmp_path, load_config(None, [f"classifier.source={path}", *overrides]))


def test_class_names_reorder_a_user_model_to_the_data_order(tmp_path: Path, monkeypatch) -> None:
    from stylexlib.classifier.training import evaluate, load_run_classifier

    data = _colour_dataset(200)
    model = load_run_classifier(_user_run(tmp_path, "classifier.class_names=[red, dark]"), data)
    assert evaluate(model, data.images, data.labels, data.class_names).accuracy > 0.9
    x = data.tensors()[0][:4]
    assert torch.equal(model(x), RedFirst()(x).flip(1))
    run = _user_run(tmp_path, "classifier.class_names=[red, dark]")
    monkeypatch.setattr("stylexlib.data.load_dataset", lambda cfg: data)  # loaded without data (StylEx.from_run)
    assert torch.equal(load_run_classifier(run)(x), model(x))
    with pytest.raises(ClassifierError, match=r"classifier.class_names \['red', 'blue'\] does not match .*'dark'"):
        load_run_classifier(_user_run(tmp_path, "classifier.class_names=[red, blue]"), data)


def test_a_user_model_at_chance_stops_with_the_order_that_fits(tmp_path: Path) -> None:
    from stylexlib.classifier.training import load_run_classifier

    data = _colour_dataset(200)
    with pytest.raises(ClassifierError, match="no better than chance") as info:
        load_run_classifier(_user_run(tmp_path), data)  # read in the data's order (dark, red): always wrong
    assert "classifier.class_names: ['red', 'dark'] would give 100.0%" in str(info.value)
    assert load_run_classifier(_user_run(tmp_path, "classifier.check_accuracy=false"), data) is not None


@pytest.mark.parametrize("check_accuracy", ["true", "false"])
def test_a_user_model_with_nan_outputs_on_the_data_stops_with_the_fix(tmp_path: Path, check_accuracy: str) -> None:
    from stylexlib.classifier.training import load_run_classifier

    data = _colour_dataset(200)
    run = _user_run(tmp_path, f"classifier.check_accuracy={check_accuracy}", model=NaNWhenRed())
    with pytest.raises(ClassifierError, match=r"returns NaN logits for \d+ of 200 images of the data \(e.g. image \d+\)"
                       ) as info:
        load_run_classifier(run, data)  # the zeros probe of check_classifier is finite: only real images show it
    assert "classifier.input_size / mean / std" in str(info.value)
