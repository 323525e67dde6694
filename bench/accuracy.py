"""Top-1/top-5 on an ImageFolder-layout dataset, each model with its own preprocessing from the registry.

Class indices follow ImageFolder's sorted folder names, which for ImageNet's synset folders (n01440764, ...) is
the standard 1000-class order.
"""
from __future__ import annotations

import os
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from timm.data import create_transform
from torch.utils.data import DataLoader, Dataset
from torchvision.datasets.folder import IMG_EXTENSIONS, default_loader, has_file_allowed_extension

import zoo

__all__ = ["DataError", "ImageList", "check_data_dir", "evaluate", "list_images", "preprocessing"]


class DataError(ValueError):
    """The --data folder is not a usable ImageFolder dataset."""


@dataclass
class ImageList:
    """The images of an ImageFolder tree, in ImageFolder's order, and the links that led to something already listed."""

    classes: list[str]
    samples: list[tuple[str, int]] = field(default_factory=list)  # (path, class index)
    repeats: list[tuple[str, str]] = field(default_factory=list)  # (path through a link, the real path already listed)

    def repeat_note(self) -> str:
        path, real = self.repeats[0]
        return (f"{len(self.repeats)} symbolic link(s) in the data folder led to images or folders already counted "
                f"(e.g. {path} -> {real}); each image was counted once.")


def _classes(root: str) -> list[str]:
    return sorted(entry.name for entry in os.scandir(root) if entry.is_dir())


def _walk(root: str, classes: list[str], repeats: list[tuple[str, str]]) -> Iterator[tuple[int, str, str]]:
    """(class index, folder, file name) of each image, each real file once, and never a folder twice.

    ImageFolder follows links, so a link to an ancestor re-walks the tree until the system's link limit (one image
    counted 41 times). Here the real folders are walked first, so a file counts under the class folder it lies in;
    links come after and add only what was not seen, under the class of the first link that reaches it.
    """
    visited = {os.path.realpath(root)}  # a link back to --data would list every class again under one label
    files: set[str] = set()

    def first_time(path: str, real: str) -> bool:
        if real in files:
            repeats.append((path, real))
            return False
        files.add(real)
        return True

    tops = [(index, os.path.join(root, name)) for index, name in enumerate(classes)]
    links = deque((index, top) for index, top in tops if os.path.islink(top))  # class folders that are links first
    stack = [(index, top) for index, top in tops if not os.path.islink(top)]
    while stack or links:
        if not stack:  # the real tree is done: follow the next link
            index, path = links.popleft()
            if os.path.isdir(path):
                stack.append((index, path))
            elif has_file_allowed_extension(path, IMG_EXTENSIONS) and first_time(path, os.path.realpath(path)):
                yield index, os.path.dirname(path), os.path.basename(path)
            continue
        index, folder = stack.pop()
        real_folder = os.path.realpath(folder)
        if real_folder in visited:
            repeats.append((folder, real_folder))
            continue
        visited.add(real_folder)
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError:  # an unreadable folder is skipped, as os.walk (and so ImageFolder) skips it
            continue
        for entry in entries:
            if entry.is_symlink():
                links.append((index, entry.path))
            elif entry.is_dir():
                stack.append((index, entry.path))
            elif has_file_allowed_extension(entry.name, IMG_EXTENSIONS):
                if first_time(entry.path, os.path.join(real_folder, entry.name)):
                    yield index, folder, entry.name


def list_images(data_dir: str | Path) -> ImageList:
    """Every image under the class folders of `data_dir`, each real file once, in ImageFolder's order."""
    root = str(data_dir)
    images = ImageList(_classes(root))
    found = sorted(_walk(root, images.classes, images.repeats))
    images.samples = [(os.path.join(folder, name), index) for index, folder, name in found]
    return images


def check_data_dir(path: str | Path) -> None:
    """Raise DataError, with one sentence, unless `path` holds class folders with images in them."""
    root = Path(path)
    if not root.is_dir():
        raise DataError(f"The --data folder {str(root)!r} does not exist.")
    try:
        classes = _classes(str(root))
    except OSError as exc:
        raise DataError(f"The --data folder {str(root)!r} cannot be read ({exc.strerror or exc}).") from None
    if not classes:
        raise DataError(f"The --data folder {str(root)!r} has no class sub-folders (expected DIR/<class>/<image>).")
    if next(_walk(str(root), classes, []), None) is None:
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


Skipped = tuple[int, str]  # (position in the evaluated list, path) of an image that could not be read


class _Images(Dataset):
    """(position, path, image, class) per sample, the image None where it cannot be read (corrupt, truncated, not
    an image): the loop counts it and goes on."""

    def __init__(self, samples: list[tuple[int, str, int]], transform: Callable):
        self.samples, self.transform = samples, transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[int, str, Any, int]:
        position, path, target = self.samples[index]
        try:
            image = self.transform(default_loader(path))
        except (OSError, ValueError, SyntaxError):  # what PIL raises for a file it cannot decode
            image = None
        return position, path, image, target


def _collate(items: list[tuple[int, str, Any, int]]) -> tuple[Any, list[Skipped]]:
    """The readable images as one batch (None if there are none) and the (position, path) of the others."""
    good = [(image, target) for _, _, image, target in items if image is not None]
    skipped = [(position, path) for position, path, image, _ in items if image is None]
    return (torch.utils.data.default_collate(good) if good else None), skipped


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
    that cannot be read are skipped and counted, and the rest still count; a real file reached again through a
    symbolic link counts once.
    """
    listing = list_images(data_dir)
    picks = range(len(listing.samples))
    if max_samples is not None and max_samples < len(listing.samples):
        # an even spread over classes, not the first few folders
        picks = torch.linspace(0, len(listing.samples) - 1, max_samples).round().long().tolist()
    samples = [(position, *listing.samples[i]) for position, i in enumerate(picks)]
    loader = DataLoader(_Images(samples, preprocessing(model, input_size)), batch_size=batch_size, shuffle=False,
                        num_workers=0, collate_fn=_collate)
    counts = torch.zeros(4, dtype=torch.int64)  # top-1 hits, top-5 hits, images seen, images skipped
    first_skipped: Skipped | None = None
    for batch, skipped in loader:
        counts[3] += len(skipped)
        first_skipped = first_skipped or (skipped[0] if skipped else None)
        if batch is None:
            continue
        images, targets = batch
        n = images.shape[0]
        if n < batch_size:
            images = torch.cat([images, images[-1:].expand(batch_size - n, *images.shape[1:])])
        logits = forward(prepare_input(images))[:n].float().cpu()
        top = logits.topk(min(5, logits.shape[-1]), dim=-1).indices
        hits = top == targets[:, None]
        counts += torch.tensor([int(hits[:, 0].sum()), int(hits.any(dim=-1).sum()), n, 0])
    correct1, correct5, seen, skipped_count = counts.tolist()
    if not seen:
        raise DataError(f"None of the {skipped_count} images could be read.")
    notes = [f"{skipped_count} unreadable image(s) skipped, e.g. {first_skipped[1]}."] if first_skipped else []
    notes += [listing.repeat_note()] if listing.repeats else []
    result: dict[str, Any] = {"top1": 100.0 * correct1 / seen, "top5": 100.0 * correct5 / seen,
                              "eval_samples": seen, "eval_skipped": skipped_count}
    return {**result, "accuracy_note": " ".join(notes)} if notes else result

