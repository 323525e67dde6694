"""Top-1/top-5 on an ImageFolder-layout dataset, each model with its own preprocessing from the registry.

Class indices follow ImageFolder's sorted folder names, which for ImageNet's synset folders (n01440764, ...) is
the standard 1000-class order.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch
from timm.data import create_transform
from torch.utils.data import DataLoader, Dataset, Subset
from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import IMG_EXTENSIONS

import zoo

__all__ = ["DataError", "check_data_dir", "evaluate", "preprocessing"]


class DataError(ValueError):
    """The --data folder is not a usable ImageFolder dataset."""


def check_data_dir(path: str | Path) -> None:
    """Raise DataError, with one sentence, unless `path` holds class folders with images in them."""
    root = Path(path)
    if not root.is_dir():
        raise DataError(f"The --data folder {str(root)!r} does not exist.")
    classes = [d for d in root.iterdir() if d.is_dir()]
    if not classes:
        raise DataError(f"The --data folder {str(root)!r} has no class sub-folders (expected DIR/<class>/<image>).")
    if not any(f.suffix.lower() in IMG_EXTENSIONS for d in classes for f in d.rglob("*")):
        raise DataError(f"The --data folder {str(root)!r} has class folders but no images in them.")


def preprocessing(model: str, input_size: tuple[int, int]) -> Callable:
    """The model's evaluation transform (resize by crop_pct, center crop, mean/std) at `input_size`."""
    info = zoo.info(model)
    return create_transform(
        input_size=(3, *input_size),
        is_training=False,
        interpolation=info.interpolation,
        mean=info.mean,
        std=info.std,
        crop_pct=info.crop_pct,
    )


class _Readable(Dataset):
    """A dataset whose unreadable images (corrupt, truncated, not an image) come back as None instead of raising."""

    def __init__(self, dataset: Dataset, paths: list[str]):
        self.dataset, self.paths = dataset, paths
        self.skipped: list[str] = []

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Any:
        try:
            return self.dataset[index]
        except (OSError, ValueError, SyntaxError):  # what PIL raises for a file it cannot decode
            self.skipped.append(self.paths[index])
            return None


def _collate(items: list[Any]) -> Any:
    items = [i for i in items if i is not None]
    return torch.utils.data.default_collate(items) if items else None


@torch.no_grad()
def evaluate(
    forward: Callable[[torch.Tensor], Any],
    model: str,
    input_size: tuple[int, int],
    data_dir: str,
    batch_size: int,
    max_samples: int | None,
    prepare_input: Callable[[torch.Tensor], torch.Tensor],
) -> dict[str, Any]:
    """Accuracy of `forward` at `batch_size`; a short batch is padded because compiled shapes are static. Images
    that cannot be read are skipped and counted, and the rest still count."""
    folder = ImageFolder(data_dir, transform=preprocessing(model, input_size))
    indices = list(range(len(folder)))
    if max_samples is not None and max_samples < len(folder):
        # an even spread over classes, not the first few folders
        indices = torch.linspace(0, len(folder) - 1, max_samples).round().long().tolist()
    dataset = _Readable(Subset(folder, indices), [folder.samples[i][0] for i in indices])
    correct1 = correct5 = seen = 0
    for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0, collate_fn=_collate):
        if batch is None:
            continue
        images, targets = batch
        n = images.shape[0]
        if n < batch_size:
            images = torch.cat([images, images[-1:].expand(batch_size - n, *images.shape[1:])])
        logits = forward(prepare_input(images))[:n].float().cpu()
        top = logits.topk(min(5, logits.shape[-1]), dim=-1).indices
        hits = top == targets[:, None]
        correct1 += int(hits[:, 0].sum())
        correct5 += int(hits.any(dim=-1).sum())
        seen += n
    result: dict[str, Any] = {"eval_samples": seen, "eval_skipped": len(dataset.skipped)}
    if dataset.skipped:
        result["accuracy_note"] = f"{len(dataset.skipped)} unreadable image(s) skipped, e.g. {dataset.skipped[0]}."
    if not seen:
        raise DataError(f"None of the {len(dataset)} images could be read.")
    return {"top1": 100.0 * correct1 / seen, "top5": 100.0 * correct5 / seen, **result}
