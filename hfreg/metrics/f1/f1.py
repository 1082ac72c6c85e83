"""Macro-averaged F1, shipped with hfreg so that `evaluate.load` works offline."""

import datasets
import evaluate
import numpy as np

from hfreg.finetune.scores import f1_of_predictions  # the harness's own implementation


class F1(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description="F1 per class, averaged over the classes present in references or predictions.",
            citation="",
            inputs_description="predictions, references: integer class ids",
            features=datasets.Features({"predictions": datasets.Value("int64"),
                                        "references": datasets.Value("int64")}),
        )

    def _compute(self, predictions, references, average="macro"):
        if average != "macro":
            raise ValueError(f"hfreg's f1 computes average='macro' only, got average={average!r}")
        if not len(references):
            return {"f1": float("nan")}
        return {"f1": f1_of_predictions(np.asarray(predictions), np.asarray(references))}
