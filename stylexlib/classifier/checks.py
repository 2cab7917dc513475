"""Checks that a user's classifier fits the data: its classes, in its output order, and better than chance."""
from __future__ import annotations

import itertools

import numpy as np
import torch

from stylexlib.classifier.model import ClassifierError, ClassifierWrapper
from stylexlib.classifier.predict import classify
from stylexlib.data import ImageDataset

CHECK_IMAGES = 256  # images the accuracy check classifies (a seeded subset of the data)
MAX_PERMUTED_CLASSES = 7  # the best output order is searched over every permutation up to this many classes


def check_accuracy(model: ClassifierWrapper, data: ImageDataset, class_names: list[str] | None,
                   images: int = CHECK_IMAGES, seed: int = 0) -> float:
    """The model's accuracy on (a subset of) the data; raise :class:`ClassifierError` when its logits are not finite
    (:func:`check_finite`) or it is no better than always answering the most common class, naming the output order
    that would fit best."""
    pick = np.sort(np.random.default_rng(seed).permutation(len(data))[:images])
    labels = data.labels[torch.as_tensor(pick)].numpy()
    logits = classify(model, data.images[torch.as_tensor(pick)])
    _check_finite(logits, pick, data)
    predictions = logits.argmax(1).numpy()
    accuracy = float((predictions == labels).mean())
    chance = float(np.bincount(labels, minlength=data.num_classes).max() / len(labels))
    if accuracy > chance:
        return accuracy
    k = data.num_classes
    confusion = np.bincount(labels * k + predictions, minlength=k * k).reshape(k, k)  # [true, predicted]
    hint = _better_order(confusion, class_names or data.class_names, data.class_names)
    raise ClassifierError(
        f"your classifier's accuracy on {len(labels)} images of the data is {accuracy:.1%}, no better than chance "
        f"({chance:.1%}: always answering the most common class); check that classifier.class_names lists the classes "
        f"in the order of the model's outputs (now: {list(class_names or data.class_names)}), and classifier.input_size"
        f" / mean / std{hint}; set classifier.check_accuracy=false to explain it anyway")


def check_finite(model: ClassifierWrapper, data: ImageDataset, images: int = CHECK_IMAGES, seed: int = 0) -> None:
    """Raise :class:`ClassifierError` when the model returns NaN or infinite logits on (a subset of) the data."""
    pick = np.sort(np.random.default_rng(seed).permutation(len(data))[:images])
    _check_finite(classify(model, data.images[torch.as_tensor(pick)]), pick, data)


def _check_finite(logits: torch.Tensor, pick: np.ndarray, data: ImageDataset) -> None:
    bad = ~torch.isfinite(logits).all(1)
    if not bad.any():
        return
    first = int(pick[int(bad.nonzero()[0])])
    kinds = " and ".join(k for k, hit in [("NaN", logits.isnan().any()), ("infinite", logits.isinf().any())] if hit)
    name = f" (e.g. {data.files[first]})" if data.files else f" (e.g. image {first})"
    raise ClassifierError(
        f"your classifier returns {kinds} logits for {int(bad.sum())} of {len(pick)} images of the data{name}; "
        "every later number (probabilities, effects) would be NaN. Check that classifier.input_size / mean / std "
        "match what the model expects, that its weights are finite, and that it returns finite logits (e.g. not "
        "log(0) of a probability; return the scores before softmax/log)")


def _better_order(confusion: np.ndarray, names_now: list[str], data_names: list[str]) -> str:
    """A hint naming the class order under which the predictions would be most accurate, if it is another one."""
    k = len(data_names)
    if k > MAX_PERMUTED_CLASSES:
        return ""
    # best[p] = the true class the images predicted as class p most likely are
    best = max(itertools.permutations(range(k)), key=lambda perm: sum(confusion[perm[p], p] for p in range(k)))
    if list(best) == list(range(k)):
        return ""
    accuracy = sum(confusion[best[p], p] for p in range(k)) / confusion.sum()
    order = [data_names[best[data_names.index(name)]] for name in names_now]
    return f"; classifier.class_names: {order} would give {accuracy:.1%}"
