"""Splitting the pairs among the ranks of a torchrun job, and putting their per-image results back in one-process order.

Shards are contiguous runs of whole batches (the batches one process would make, padding and all), so every image
is computed in the same batch, next to the same images, as in a single process; the ranks' results are then
re-ordered by sample index before anything is summed, so every sum runs in the single process's order and the
merged scores are bit-identical to its.
"""
from __future__ import annotations

from dataset.pairs import Dataset, Sample


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


def in_order(items: list, key, order: dict[str, int]) -> list:
    """`items` sorted by the single-process index of `key(item)` (an image id)."""
    return sorted(items, key=lambda item: order[key(item)])
