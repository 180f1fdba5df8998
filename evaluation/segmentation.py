"""Segmentation Dice of segmentation networks on test images (one row per image).

The registrar protocol (:mod:`regseg.evaluation.pairs`) scores registrations on pairs; a
segmentation network is scored on single images: the argmax of its class probabilities against
the manual label map, per class (DeepAtlas §3: "Dice overlap scores between predictions and the
manual segmentations for the segmentation network").

A *segmenter* is any object with ``segment(sample) -> (X, Y, Z, K + 1)`` class probabilities
(channel 0 background) or ``(X, Y, Z)`` int labels, for a preprocessed
:class:`~regseg.datasets.subjects.Sample`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from . import metrics

__all__ = ["evaluate_segmentations", "hard_labels"]


def hard_labels(prediction) -> np.ndarray:
    """``(X, Y, Z, K + 1)`` probabilities -> argmax labels; ``(X, Y, Z)`` int labels unchanged.

    Raises:
        ValueError: a float array without a class axis (not probabilities nor labels).
    """
    prediction = np.asarray(prediction)
    if prediction.ndim == 4:
        return prediction.argmax(-1).astype(np.int32)
    if prediction.ndim == 3 and np.issubdtype(prediction.dtype, np.integer):
        return prediction.astype(np.int32)
    raise ValueError(f"a segmentation must be (X, Y, Z, K + 1) probabilities or (X, Y, Z) int "
                     f"labels, got shape {prediction.shape} and dtype {prediction.dtype}")


def evaluate_segmentations(segmenters: Mapping[str, object], samples: Sequence, *,
                           label: str = "segmentation", class_names: Sequence[str] | None = None,
                           empty: float = 0.0) -> dict[str, pd.DataFrame]:
    """Dice per class of every segmenter on every sample.

    Args:
        segmenters: ``{method: segmenter}`` (see the module docstring).
        samples: preprocessed samples or a dataset (``load(i)``, ``class_names``).
        label: the manual label map scored against (classes ``1..K``).
        class_names: column names (default: the dataset's ``class_names``, else "1".."K").
        empty: Dice of a class absent from both maps (0/0); 0 as
            :func:`~regseg.evaluation.pairs.evaluate_pairs`.
    Returns:
        ``{method: DataFrame}``, index ``subject`` (subject ids), one column per class,
        dimensionless Dice in [0, 1].
    Raises:
        DataError: a sample without the label map (named); ValueError: a prediction of the
        wrong shape (named method and subject).
    """
    names = list(class_names or getattr(samples, "class_names", []) or [])
    loaded = [samples.load(i) for i in range(len(samples))] if hasattr(samples, "load") \
        else list(samples)
    if not names:
        n = int(max(int(s.label(label).max()) for s in loaded))
        names = [str(k) for k in range(1, n + 1)]
    classes = list(range(1, len(names) + 1))
    out = {}
    for method, segmenter in segmenters.items():
        rows = []
        for sample in loaded:
            truth = sample.label(label)
            pred = hard_labels(segmenter.segment(sample))
            if pred.shape != truth.shape:
                raise ValueError(f"{method}: prediction of shape {pred.shape} for "
                                 f"{sample.subject_id}, whose labels are {truth.shape}")
            rows.append(metrics.dice(pred, truth, classes, empty=empty))
        out[method] = pd.DataFrame(np.array(rows).reshape(len(loaded), -1),
                                   index=pd.Index([s.subject_id for s in loaded], name="subject"),
                                   columns=names)
    return out
