"""Splitting the pairs among the ranks of a torchrun job, and putting their per-image results back in one-process order.

Shards are contiguous runs of whole batches (the batches one process would make, padding and all), so every image
is computed in the same batch, next to the same images, as in a single process; the ranks' results are then
re-ordered by sample index before anything is summed, so every sum runs in the single process's order and the
merged scores are bit-identical to its.
"""
from __future__ import annotations

from utils.data import Dataset, Sample
from utils.metrics import Accuracy


def span(count: int, rank: int, size: int) -> tuple[int, int]:
    """[start, stop) of `rank`'s share of `count` items split into `size` contiguous runs; the first `count % size`
    ranks take one more, so rank 0 has data whenever there is any."""
    base, extra = divmod(count, size)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


def _batches(samples: list[Sample], batch_size: int) -> list[list[Sample]]:
    return [samples[i: i + batch_size] for i in range(0, len(samples), batch_size)]


def shard(dataset: Dataset, batch_size: int, rank: int, size: int) -> Dataset:
    """`rank`'s share of `dataset`: a contiguous run of the batches one process would make (the scored pairs' batches,
    then the unpaired images'), so its batches, a padded last one included, are exactly those. Every sample lands
    in exactly one shard; with fewer batches than ranks the last ranks get none."""
    batches = [(True, b) for b in _batches(dataset.samples, batch_size)]
    batches += [(False, b) for b in _batches(dataset.unpaired, batch_size)]
    start, stop = span(len(batches), rank, size)
    mine = batches[start:stop]
    return Dataset([s for paired, b in mine if paired for s in b], [s for paired, b in mine if not paired for s in b],
                   dataset.has_masks)


def sample_order(dataset: Dataset) -> dict[str, int]:
    """Sample id -> its index in the single process's order (scored pairs, then unpaired images)."""
    return {s.id: i for i, s in enumerate(dataset.samples + dataset.unpaired)}


def merge_accuracy(parts: list[Accuracy], order: dict[str, int]) -> Accuracy:
    """One Accuracy holding every part's images in `order` (the single process's), so `scores()` and `agreement()`
    sum in its order. Micro dice pools integer pixel counts, which any order sums exactly; the eager reference's
    dice (one per scored image, present for all or none of a part's scored images) follows its image."""
    entries = []
    for acc in parts:
        scored = [k for k, d in enumerate(acc.dice) if d is not None]
        reference = dict(zip(scored, acc.reference_dice)) if len(acc.reference_dice) == len(scored) else {}
        entries.extend((order[image_id], acc, k, reference.get(k)) for k, image_id in enumerate(acc.ids))
    entries.sort(key=lambda e: e[0])
    merged = Accuracy()
    for _, acc, k, ref in entries:
        merged.ids.append(acc.ids[k])
        merged.dice.append(acc.dice[k])
        merged.iou.append(acc.iou[k])
        merged.fg_true.append(acc.fg_true[k])
        merged.fg_pred.append(acc.fg_pred[k])
        if k < len(acc.cosine):  # scores at the original size carry no cosine (make_row reads the model size's)
            merged.cosine.append(acc.cosine[k])
        if ref is not None:
            merged.reference_dice.append(ref)
    merged.counts = [c for acc in parts for c in acc.counts]
    merged.max_abs_diff = max((acc.max_abs_diff for acc in parts), default=0.0)
    return merged


def in_order(items: list, key, order: dict[str, int]) -> list:
    """`items` sorted by the single-process index of `key(item)` (an image id)."""
    return sorted(items, key=lambda item: order[key(item)])
