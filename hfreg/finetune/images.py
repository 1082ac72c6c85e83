"""Image classification (``--task image-classification``): the data as transformers' `run_image_classification.py`
takes them (a hub data set, or ``--train_dir``/``--validation_dir``/``--test_dir`` in the imagefolder layout), the
model's own `AutoImageProcessor` applied batch by batch, and no augmentation, so that the presets are the only
regularizer that differs between arms. The labels, subsets, evaluation and verdicts are a classifier's, as for
text.
"""

from __future__ import annotations

import torch

IMAGE_CANDIDATES = ("image", "img")


def image_column(raw, name: str | None = None) -> str | None:
    """The image column of the training split: ``name`` (``--image_column_name``), else the first column whose
    feature is an image (`datasets.Image`), preferring `IMAGE_CANDIDATES`; None where there is none."""
    features = raw["train"].features
    if name is not None:
        if name not in features:
            raise ValueError(f"--image_column_name {name!r} is not a column; columns: {list(features)}")
        return name
    found = [c for c, f in features.items() if type(f).__name__ == "Image"]
    return next((c for c in IMAGE_CANDIDATES if c in found), found[0] if found else None)


class _Images:
    """One split's images, decoded one at a time as a batch asks for them (a split is never held decoded)."""

    def __init__(self, ds, column: str):
        self.ds, self.column = ds, column

    def __len__(self):
        return len(self.ds)

    def __getitem__(self, j):
        return self.ds[int(j)][self.column]


def encode(raw, column: str, label_column: str, problem_type: str | None = None):
    """{split: `data.Encoded`} whose inputs are the split's images and whose labels are `data.label_ids`'; with
    the label names and the problem type."""
    from .data import Encoded, label_ids

    ids, names, problem_type = label_ids(raw, label_column, problem_type)
    for split in ids:  # every image decoded once, before anything is written: a broken file is one line now
        check_images(raw[split], column, split)
    return {split: Encoded(_Images(raw[split], column), ids[split], images=True) for split in ids}, names, \
        problem_type


def check_images(ds, column: str, split: str) -> None:
    """One-line ValueError naming the first example of ``ds`` whose image does not decode."""
    from datasets import Image

    raw = ds.cast_column(column, Image(decode=False))
    for j, value in enumerate(raw[column]):
        try:
            Image().decode_example(value).load()
        except Exception as e:  # noqa: BLE001 - PIL raises many types; the user needs the file and the reason
            where = value.get("path") or f"example {j}"
            raise ValueError(f"the {split} split's image {where} does not decode: "
                             f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None


class Collator:
    """Batches of images through the model's processor (resize, rescale, normalize: RGB), with their labels."""

    def __init__(self, processor):
        self.processor = processor
        self.tokenizer = processor  # what a kept model saves beside its weights (`keep.Keeper`)

    def __call__(self, items: list[dict]) -> dict:
        images = [x["input_ids"].convert("RGB") for x in items]
        pixels = self.processor(images=images, return_tensors="pt")["pixel_values"]
        labels = torch.tensor([x["labels"] for x in items])
        return {"pixel_values": pixels, "labels": labels}
