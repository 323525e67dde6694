"""Top-1/top-5 on an ImageFolder-layout dataset, each model with its own preprocessing from the registry.

Class indices follow ImageFolder's sorted folder names, which for ImageNet's synset folders (n01440764, ...) is
the standard 1000-class order. Under torchrun the images are split over the ranks and the counts summed:

    PYTHONSAFEPATH=1 torchrun --nproc-per-node=8 -m bench.accuracy --model rmt_s --pretrained --data imagenet/val

(PYTHONSAFEPATH=1, Python 3.11+, keeps the working folder off the ranks' sys.path: torchrun starts them as
`python -m`, which would import a `bench/` or `timm/` folder where you stand.)
"""

from __future__ import annotations

import argparse
import datetime
import errno
import json
import os
import stat
import sys
import warnings
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
import torch.distributed as dist
from PIL import Image
from timm.data import create_transform
from torch.utils.data import DataLoader, Dataset
from torchvision.datasets.folder import IMG_EXTENSIONS, has_file_allowed_extension

import zoo
from common import paths
from common.cli import EXIT_USAGE, OneLineParser, UsageError

from .args import EXIT_FAILED, EXIT_OUTPUT, input_sizes, positive_float, positive_int
from .env import available_memory
from .precision import memory_refusal

__all__ = [
    "DataError",
    "RanksError",
    "DEFAULT_TIMEOUT_S",
    "ImageList",
    "check_data_dir",
    "evaluate",
    "list_images",
    "main",
    "preprocessing",
]


# Under torchrun, how long a rank waits for the others before the run fails (torch's own default is 30 minutes, in
# silence). Evaluation runs before the only collective, so this must cover the slowest rank's whole share of the
# images beyond the fastest's: raise it with --timeout-s for large sets on uneven machines.
DEFAULT_TIMEOUT_S = 300.0


class DataError(ValueError):
    """The --data folder is not a usable ImageFolder dataset."""


class Meaningless(ValueError):
    """The inputs make the accuracy meaningless (no classifier, class folders that are not the head's classes,
    logits that are not numbers): no top-1 is reported, and the sentence says why."""


class SharedMemoryError(RuntimeError):
    """The DataLoader's worker processes could not pass images through shared memory (/dev/shm full or too small)."""


# What torch says when /dev/shm cannot take a worker's batch: a failed write, or the worker killed by SIGBUS.
_SHM_SIGNS = ("No space left on device", "Bus error", "shared memory", "unable to write to file </torch_")
SHM = "/dev/shm"


def shared_memory_refusal(workers: int, batch_size: int, input_size: tuple[int, int]) -> str | None:
    """Why `workers` DataLoader processes cannot hand batches over through /dev/shm (each keeps two fp32 batches in
    flight there), checked before anything is read; None if they can or there are none."""
    if workers <= 0:
        return None
    need = workers * 2 * batch_size * 3 * input_size[0] * input_size[1] * 4
    try:
        stats = os.statvfs(SHM)
    except OSError:
        return None
    free = stats.f_bavail * stats.f_frsize
    if need <= free:
        return None
    return (
        f"--workers {workers} passes about {need / 2**20:.0f} MiB of decoded images through {SHM}, which has "
        f"{free / 2**20:.0f} MiB free; use --workers 0, a smaller --batch-size, or a larger {SHM} (docker --shm-size)."
    )


class RanksError(RuntimeError):
    """Under torchrun, the other ranks did not answer within the timeout (one stopped, crashed or never started)."""


@dataclass
class ImageList:
    """The images of an ImageFolder tree, in ImageFolder's order, and the links that led to something already listed."""

    classes: list[str]
    samples: list[tuple[str, int]] = field(default_factory=list)  # (path, class index)
    repeats: list[tuple[str, str]] = field(default_factory=list)  # (path through a link, the real path already listed)
    unreadable: list[str] = field(default_factory=list)  # folders under a class folder that could not be listed
    outside: list[str] = field(default_factory=list)  # links to folders out of the data folder, not followed
    odd: list[str] = field(default_factory=list)  # entries named like images that are no regular file (a FIFO)

    def repeat_note(self) -> str:
        path, real = self.repeats[0]
        return (
            f"{len(self.repeats)} symbolic link(s) in the data folder led to images or folders already counted "
            f"(e.g. {path} -> {real}); each image was counted once."
        )


def _classes(root: str) -> list[str]:
    return sorted(entry.name for entry in os.scandir(root) if entry.is_dir())


def _walk(root: str, images: ImageList) -> Iterator[tuple[int, str, str]]:
    """(class index, folder, file name) of each image, each real file once, and never a folder twice.

    ImageFolder follows links, so a link to an ancestor re-walks the tree until the system's link limit (one image
    counted 41 times). Here the real folders are walked first, so a file counts under the class folder it lies in;
    links come after and add only what was not seen, under the class of the first link that reaches it. Only regular
    files are listed (a FIFO named like an image would block its reader forever), and a link to a folder inside a
    class folder is followed only where it stays inside the data folder or a class folder (a link to / would walk
    the whole filesystem); a link to an image file counts wherever the file lies (a subset made of links). What is
    left out is recorded on `images`, and the walk covers each real folder once.
    """
    visited = {os.path.realpath(root)}  # a link back to --data would list every class again under one label
    files: set[str] = set()
    tops = [(index, os.path.join(root, name)) for index, name in enumerate(images.classes)]
    class_folders = {top for _, top in tops}  # a class folder may be a link to another disk: it is the data
    inside = (os.path.realpath(root), *(os.path.realpath(top) for top in class_folders))

    def first_time(path: str, real: str) -> bool:
        if real in files:
            images.repeats.append((path, real))
            return False
        files.add(real)
        return True

    links = deque((index, top) for index, top in tops if os.path.islink(top))  # class folders that are links first
    stack = [(index, top) for index, top in tops if not os.path.islink(top)]
    while stack or links:
        if not stack:  # the real tree is done: follow the next link
            index, path = links.popleft()
            real = os.path.realpath(path)
            if os.path.isdir(path):
                if path in class_folders or any(_under(real, place) for place in inside):
                    stack.append((index, path))
                else:
                    images.outside.append(path)
            elif not has_file_allowed_extension(path, IMG_EXTENSIONS):
                continue
            elif not os.path.isfile(path):
                images.odd.append(path)
            elif first_time(path, real):
                yield index, os.path.dirname(path), os.path.basename(path)
            continue
        index, folder = stack.pop()
        real_folder = os.path.realpath(folder)
        if real_folder in visited:
            images.repeats.append((folder, real_folder))
            continue
        visited.add(real_folder)
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError:  # skipped, as os.walk (and so ImageFolder) skips it, but counted: the caller says so
            images.unreadable.append(folder)
            continue
        for entry in entries:
            if entry.is_symlink():
                links.append((index, entry.path))
            elif entry.is_dir(follow_symlinks=False):
                stack.append((index, entry.path))
            elif not has_file_allowed_extension(entry.name, IMG_EXTENSIONS):
                continue
            elif not entry.is_file(follow_symlinks=False):
                images.odd.append(entry.path)
            elif first_time(entry.path, os.path.join(real_folder, entry.name)):
                yield index, folder, entry.name


def _under(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def list_images(data_dir: str | Path) -> ImageList:
    """Every image under the class folders of `data_dir`, each real file once, in ImageFolder's order."""
    root = str(data_dir)
    images = ImageList(_classes(root))
    found = sorted(_walk(root, images))
    images.samples = [(os.path.join(folder, name), index) for index, folder, name in found]
    return images


def check_data_dir(path: str | Path) -> None:
    """Raise DataError, with one sentence, unless `path` holds class folders with images in them."""
    root = Path(path)
    if not root.is_dir():
        raise DataError(
            f"The --data path {str(root)!r} is not a folder; give the folder that holds the class folders."
            if root.exists()
            else f"The --data folder {str(root)!r} does not exist."
        )
    try:
        classes = _classes(str(root))
    except OSError as exc:
        raise DataError(f"The --data folder {str(root)!r} cannot be read ({exc.strerror or exc}).") from None
    if not classes:
        raise DataError(f"The --data folder {str(root)!r} has no class sub-folders (expected DIR/<class>/<image>).")
    for name in classes:  # a class whose folder cannot be listed would be scored without its images
        try:
            os.scandir(root / name).close()
        except OSError as exc:
            raise DataError(
                f"The class folder {str(root / name)!r} of --data cannot be read ({exc.strerror or exc}), so its "
                f"images would be missing from the accuracy."
            ) from None
    if next(_walk(str(root), ImageList(classes)), None) is None:
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


# Grey images of 16 (PNG, TIFF) or 32 bits: PIL's convert("RGB") clips their 0..65535 at 255 instead of scaling.
_WIDE_GREY = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def to_rgb(image: Image.Image) -> Image.Image:
    """Any image as 8-bit RGB with its values as meant: 16-bit grey scaled to 8 bits (65535 is 255), palette
    images through their colours (a transparent index included), CMYK through PIL's conversion, and an alpha
    channel dropped, as timm's and torchvision's loaders drop it."""
    if image.mode in _WIDE_GREY:
        scaled = np.clip(np.rint(np.asarray(image, dtype=np.float64) / 257.0), 0, 255).astype(np.uint8)
        image = Image.fromarray(scaled, "L")
    elif image.mode in ("P", "PA"):
        image = image.convert("RGBA")
    return image.convert("RGB")


def load_rgb(path: str) -> Image.Image:
    """The image at `path`, read whole and converted by `to_rgb`: the one conversion every accuracy input takes."""
    with Image.open(path) as image:
        return to_rgb(image)


Skipped = tuple[int, str]  # (position in the evaluated list, path) of an image that could not be read


class _Images(Dataset):
    """(position, path, image, class) per sample, the image None where it cannot be read (corrupt, truncated, not
    an image): the loop counts it and goes on, and the count survives DataLoader worker processes."""

    def __init__(self, samples: list[tuple[int, str, int]], transform: Callable):
        self.samples, self.transform = samples, transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[int, str, Any, int]:
        position, path, target = self.samples[index]
        try:
            with warnings.catch_warnings():
                # PIL only warns below twice its pixel limit; such an image is as unreadable here as a bigger bomb
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                if not stat.S_ISREG(os.stat(path).st_mode):  # replaced by a FIFO since it was listed: never opened
                    raise OSError(errno.EINVAL, "not a regular file", path)
                image = self.transform(load_rgb(path))
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError, Image.DecompressionBombWarning):
            image = None  # what PIL raises for a file it cannot decode, or will not (a decompression bomb)
        return position, path, image, target


def _collate(items: list[tuple[int, str, Any, int]]) -> tuple[Any, list[Skipped]]:
    """The readable images as one batch (None if there are none) and the (position, path) of the others."""
    good = [(image, target) for _, _, image, target in items if image is not None]
    skipped = [(position, path) for position, path, image, _ in items if image is None]
    return (torch.utils.data.default_collate(good) if good else None), skipped


def _rank_and_world() -> tuple[int, int]:
    """This process's place in the torch.distributed group that torchrun set up; (0, 1) without one."""
    return (dist.get_rank(), dist.get_world_size()) if dist.is_available() and dist.is_initialized() else (0, 1)


def _over_ranks(counts: torch.Tensor, first_skipped: Skipped | None) -> tuple[torch.Tensor, Skipped | None]:
    """The counts summed over the process group, and the skipped image that comes first in the dataset."""
    if _rank_and_world()[1] == 1:
        return counts, first_skipped
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    counts = counts.to(device)
    firsts: list[Skipped | None] = [None] * dist.get_world_size()
    try:
        dist.all_reduce(counts)
        dist.all_gather_object(firsts, first_skipped)
    except RuntimeError as exc:  # gloo and NCCL say a timeout or a lost peer as a RuntimeError
        raise RanksError(str(exc)) from None
    return counts.cpu(), min((f for f in firsts if f is not None), default=None)


@torch.no_grad()
def evaluate(
    forward: Callable[[torch.Tensor], Any],
    model: str,
    input_size: tuple[int, int],
    data_dir: str,
    batch_size: int,
    max_samples: int | None,
    prepare_input: Callable[[torch.Tensor], torch.Tensor],
    workers: int = 0,
    head_classes: int | None = None,
) -> dict[str, Any]:
    """Accuracy of `forward` at `batch_size`; a short batch is padded because compiled shapes are static. Images
    that cannot be read are skipped and counted, and the rest still count; a real file reached again through a
    symbolic link counts once.

    Under an initialised torch.distributed process group (torchrun) rank r reads images r, r + world_size, ...
    and the counts are summed, so every image counts exactly once whatever the world size.

    Raises Meaningless when no accuracy could be right: `head_classes` (the model's `num_classes`) is 0, there are
    more class folders than classes the head scores, or every image's logits hold NaN or infinity (an image whose
    logits do counts as a miss, and the note says how many). Fewer folders than classes are scored, with a note.
    """
    listing = list_images(data_dir)
    head_note = _check_head(head_classes, len(listing.classes), data_dir)
    picks = range(len(listing.samples))
    if max_samples is not None and max_samples < len(listing.samples):
        # an even spread over classes, not the first few folders
        picks = torch.linspace(0, len(listing.samples) - 1, max_samples).round().long().tolist()
    rank, world = _rank_and_world()
    mine = [(position, *listing.samples[i]) for position, i in enumerate(picks)][rank::world]
    loader = DataLoader(
        _Images(mine, preprocessing(model, input_size)),
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        collate_fn=_collate,
    )
    counts = torch.zeros(5, dtype=torch.int64)  # top-1 hits, top-5 hits, images seen, skipped, not-finite logits
    first_skipped: Skipped | None = None
    try:  # with --workers, a full /dev/shm surfaces here, as the workers hand their batches over
        for batch, skipped in loader:
            counts[3] += len(skipped)
            first_skipped = first_skipped or (skipped[0] if skipped else None)
            if batch is None:
                continue
            images, targets = batch
            n = images.shape[0]
            if n < batch_size:
                images = torch.cat([images, images[-1:].expand(batch_size - n, *images.shape[1:])])
            logits = forward(prepare_input(images))
            if not isinstance(logits, torch.Tensor) or logits.ndim != 2:
                raise Meaningless(f"{model} returns {_shape(logits)}, not one row of class scores per image.")
            head_note = _check_head(logits.shape[-1], len(listing.classes), data_dir)
            logits = logits[:n].float().cpu()
            finite = logits.isfinite().all(dim=-1)
            top = logits.topk(min(5, logits.shape[-1]), dim=-1).indices
            hits = (top == targets[:, None]) & finite[:, None]  # a NaN sorts first; an image without numbers is a miss
            counts += torch.tensor([int(hits[:, 0].sum()), int(hits.any(dim=-1).sum()), n, 0, int((~finite).sum())])
    except RuntimeError as exc:
        if workers and any(sign in str(exc) for sign in _SHM_SIGNS):
            raise SharedMemoryError(
                f"The --workers {workers} DataLoader processes ran out of shared memory ({SHM} is full or too "
                f"small); use --workers 0 or a larger {SHM} (docker --shm-size)."
            ) from None
        raise
    counts, first_skipped = _over_ranks(counts, first_skipped)
    correct1, correct5, seen, skipped_count, not_finite = counts.tolist()
    if not seen:
        raise DataError(f"None of the {skipped_count} images could be read.")
    if not_finite == seen:
        raise Meaningless(f"{model} gave NaN or infinite logits for all {seen} images (damaged weights, or overflow).")
    notes = [f"{skipped_count} unreadable image(s) skipped, e.g. {first_skipped[1]}."] if first_skipped else []
    notes += [f"{not_finite} image(s) gave NaN or infinite logits and count as misses."] if not_finite else []
    notes += [listing.repeat_note()] if listing.repeats else []
    notes += [head_note] if head_note else []
    if listing.outside:
        notes.append(
            f"{len(listing.outside)} symbolic link(s) to folders out of the data folder were skipped, e.g. "
            f"{listing.outside[0]}."
        )
    if listing.odd:
        notes.append(
            f"{len(listing.odd)} entries named like images are no regular files and were skipped, e.g. "
            f"{listing.odd[0]}."
        )
    if listing.unreadable:
        notes.append(
            f"{len(listing.unreadable)} folder(s) could not be read and were skipped, e.g. {listing.unreadable[0]}."
        )
    result: dict[str, Any] = {
        "top1": 100.0 * correct1 / seen,
        "top5": 100.0 * correct5 / seen,
        "eval_samples": seen,
        "eval_skipped": skipped_count,
    }
    return {**result, "accuracy_note": " ".join(notes)} if notes else result


def _shape(output: Any) -> str:
    return f"a tensor of shape {tuple(output.shape)}" if isinstance(output, torch.Tensor) else type(output).__name__


def _check_head(classes: int | None, folders: int, data_dir: str) -> str:
    """Refuse a head that cannot score these class folders (none at all, fewer classes than folders); for fewer
    folders than classes, the note that says so: folder i is scored as the head's class i, which is right only for
    a dataset holding the head's first classes."""
    if classes == 0:
        raise Meaningless("The model has no classifier (num_classes=0), so it has no accuracy to measure.")
    if classes is not None and classes < folders:
        raise Meaningless(
            f"The --data folder {data_dir!r} has {folders} class folders, more than the {classes} classes the "
            f"model's head scores."
        )
    if classes is not None and classes > folders:
        return (
            f"The {folders} class folder(s) were scored as the first {folders} of the head's {classes} classes, "
            f"which is right only if they are those classes, in that order."
        )
    return ""


def _parser() -> argparse.ArgumentParser:
    p = OneLineParser(
        prog="python -m bench.accuracy",
        description="Top-1/top-5 of one model on an ImageFolder dataset, split over the ranks under torchrun.",
        epilog="PYTHONSAFEPATH=1 torchrun --nproc-per-node 8 -m bench.accuracy --model rmt_s --pretrained --data "
        "/path/to/imagenet/val (PYTHONSAFEPATH=1 keeps the working folder off the ranks' sys.path)",
    )
    p.add_argument("--model", required=True, metavar="NAME", help="zoo or timm model name")
    p.add_argument("--data", required=True, metavar="DIR", help="ImageFolder-layout dataset (DIR/<class>/<image>)")
    p.add_argument(
        "--batch-size", type=positive_int, default=64, metavar="N", help="images per forward, per rank (default 64)"
    )
    p.add_argument(
        "--max-samples", type=positive_int, metavar="N", help="evaluate at most N images (spread over the set)"
    )
    weights = p.add_mutually_exclusive_group()
    weights.add_argument("--pretrained", action="store_true", help="the model's Hub weights")
    weights.add_argument(
        "--checkpoint", metavar="PATH", help="local weights (a file, or a folder from `python -m hub convert`)"
    )
    p.add_argument("--input-size", nargs="+", metavar="SIZE", help="N, HxW or timm's C H W (default: the model's own)")
    p.add_argument(
        "--device",
        choices=("cpu", "cuda"),
        help="cuda runs each rank on cuda:LOCAL_RANK (default: cuda when available)",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=0,
        metavar="N",
        help="DataLoader processes per rank that decode images (default 0)",
    )
    p.add_argument("--out", metavar="FILE", help="also write the result, as JSON, to FILE (rank 0)")
    p.add_argument(
        "--timeout-s",
        type=positive_float,
        default=DEFAULT_TIMEOUT_S,
        metavar="S",
        help=f"under torchrun: seconds a rank waits for the others (to start, or at the final sum) before the run "
        f"fails, so a rank that stopped ends it instead of hanging it (default {DEFAULT_TIMEOUT_S:.0f})",
    )
    return p


def parse_args(argv: Sequence[str], rank: int, local_world: int) -> argparse.Namespace:
    """Parse and validate before any process group or model exists; every problem is a UsageError of one sentence.

    Every rank checks what it reads; only rank 0 writes, so only rank 0 checks --out.
    """
    args = _parser().parse_args(argv)
    try:
        zoo.info(args.model)
    except zoo.UnknownModelError as exc:
        raise UsageError(str(exc)) from None
    sizes = input_sizes(args.input_size) if args.input_size else [tuple(zoo.info(args.model).input_size[1:])]
    if len(sizes) != 1:
        raise UsageError(f"--input-size takes one size here, got {len(sizes)}.")
    args.input_size = sizes[0]
    if args.workers < 0:
        raise UsageError(f"--workers must be 0 or more, got {args.workers}.")
    try:
        check_data_dir(args.data)
    except DataError as exc:
        raise UsageError(str(exc)) from None
    args.data = Path(args.data).resolve()
    if args.checkpoint:
        try:  # a file, or a folder `python -m hub convert` wrote: what zoo.load takes
            zoo.checkpoint_file(args.checkpoint)
        except zoo.CheckpointError as exc:
            raise UsageError(f"--checkpoint: {exc}") from None
    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.device == "cuda" and torch.cuda.device_count() < local_world:
        raise UsageError(
            f"--device cuda needs a GPU for each of the {local_world} rank(s) on this machine, and torch "
            f"sees {torch.cuda.device_count()}."
        )
    reason = shared_memory_refusal(args.workers, args.batch_size, args.input_size)
    if reason:
        raise UsageError(reason)
    free = available_memory(args.device)  # the batch the images are read in must fit, as bench.py checks it
    reason = free is not None and memory_refusal(
        args.model, args.input_size, args.batch_size, "fp32", args.device, free
    )
    if reason:
        raise UsageError(reason)
    if args.out and rank == 0:  # an OutputPathError is a UsageError
        paths.check_output_path(args.out, "--out")
        paths.check_distinct({"--out": args.out}, {"--data": args.data, "--checkpoint": args.checkpoint})
    return args


def _fail(message: str, local_rank: int) -> int:
    """Every rank meets the same problem, so one line per machine says it."""
    if local_rank == 0:
        print(f"error: {message}", file=sys.stderr)
    return EXIT_USAGE


def main(argv: Sequence[str] | None = None) -> int:
    """One rank of `torchrun ... -m bench.accuracy` (or the only process, without torchrun)."""
    paths.ignore_file_size_signal()
    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    local_rank, local_world = int(os.environ.get("LOCAL_RANK", "0")), int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    try:
        args = parse_args(list(sys.argv[1:] if argv is None else argv), rank, local_world)
    except UsageError as exc:
        return _fail(str(exc), local_rank)
    device = f"cuda:{local_rank}" if args.device == "cuda" else "cpu"
    try:
        model = zoo.load(args.model, pretrained=args.checkpoint or args.pretrained).to(device).eval()
    except Exception as exc:  # a bad checkpoint or an unreachable Hub: zoo says why in its first line
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        return _fail(f"Could not build {args.model}: {reason}", local_rank)
    classes = getattr(model, "num_classes", None)
    try:
        _check_head(classes, len(_classes(str(args.data))), str(args.data))
    except Meaningless as exc:
        return _fail(str(exc), local_rank)
    try:
        if world > 1:
            if args.device == "cuda":
                torch.cuda.set_device(device)
            try:
                dist.init_process_group(
                    "nccl" if args.device == "cuda" else "gloo", timeout=datetime.timedelta(seconds=args.timeout_s)
                )
            except RuntimeError as exc:  # the rendezvous timed out (DistStoreError and the like)
                raise RanksError(str(exc)) from None
        result = evaluate(
            model,
            args.model,
            args.input_size,
            str(args.data),
            args.batch_size,
            args.max_samples,
            lambda images: images.to(device),
            workers=args.workers,
            head_classes=classes,
        )
    except DataError as exc:  # no image could be read: every rank knows, after the counts were summed
        return _fail(str(exc), local_rank)
    except Meaningless as exc:  # the model's outputs: no accuracy to report
        if local_rank == 0:
            print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except SharedMemoryError as exc:  # /dev/shm filled while the workers ran
        if local_rank == 0:
            print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except RanksError as exc:  # another rank stopped or never came: each rank says so, with its number
        why = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        print(
            f"error: rank {rank} of {world}: the other ranks did not answer within --timeout-s {args.timeout_s:g} s "
            f"(a rank stopped or never started; {why}).",
            file=sys.stderr,
        )
        return EXIT_FAILED
    finally:
        if world > 1 and dist.is_initialized():
            dist.destroy_process_group()
    if rank == 0:
        weights = args.checkpoint or ("hub" if args.pretrained else "random init")
        result = {
            "model": args.model,
            "weights": weights,
            **result,
            "world_size": world,
            "data": str(args.data),
            "input_size": list(args.input_size),
        }
        print(json.dumps(result))
        if args.out:
            try:  # whole or not at all, never through a link planted beside it
                paths.write_atomic(args.out, json.dumps(result, indent=2) + "\n")
            except paths.WriteError as exc:
                print(f"error: {exc}", file=sys.stderr)
                return EXIT_OUTPUT
    return 0


if __name__ == "__main__":
    sys.exit(main())
