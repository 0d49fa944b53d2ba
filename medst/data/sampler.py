"""Which studies form a Med-ST batch (Method §1): S whole time-ordered sequences of L studies, then singles.

:class:`SequenceBatchSampler` (a ``torch.utils.data`` batch sampler, DDP-aware) yields lists of dataset indices;
the indices of sequence studies are :class:`SequenceIndex` values, plain ``int`` subclasses that also carry their
position in the sequence. The dataset copies that position into the item and the
:class:`~medst.data.dataset.Collator` counts the leading run of sequence items to know S. A plain integer index
is a single study.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from torch.utils.data import Sampler


class SequenceIndex(int):
    """A dataset index that also says "position ``position`` of a sequence in this batch"."""

    position: int

    def __new__(cls, index: int, position: int) -> SequenceIndex:
        obj = super().__new__(cls, index)
        obj.position = int(position)
        return obj

    def __reduce__(self):
        return (SequenceIndex, (int(self), self.position))

    def __repr__(self) -> str:
        return f"SequenceIndex({int(self)}, position={self.position})"


class SequenceBatchSampler(Sampler[list[int]]):
    """Batches of S whole sequences (S·L indices, each sequence in time order) followed by single studies.

    - Every window of L consecutive studies of a patient is one sequence; each epoch uses every sequence once,
      in an order shuffled with ``(seed, epoch)`` (call :meth:`set_epoch`).
    - No two sequences of one patient share a batch (a conflicting sequence waits for the next batch), so no
      study appears twice in a batch.
    - Singles are studies of patients with fewer than L studies (they belong to no sequence, Method §1),
      cycled through in shuffled order, no study twice in a batch. With ``sequences_per_batch=0`` the batches
      are singles only and every study of the split is used once per epoch.
    - DDP: every rank computes the same list of *global* batches of ``world_size·S`` sequences and
      ``world_size·singles`` singles (no patient twice in a global batch, so the gathered negatives of the
      global loss are all true negatives) and takes its own slice: rank r gets sequences ``r·S … r·S+S-1``
      and the r-th share of the singles. Sequences stay whole, and ``world_size`` processes see exactly the
      studies that one process with the global batch would see. ``drop_last`` drops incomplete batches
      (always, with several processes).

    ``dataset`` needs ``__len__``, ``subject_ids`` (list) and ``windows(length)`` (see
    :class:`~medst.data.dataset.StudyDataset`).
    """

    def __init__(
        self,
        dataset: Any,
        sequences_per_batch: int,
        singles_per_batch: int,
        sequence_length: int = 4,
        shuffle: bool = True,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = True,
    ):
        if sequences_per_batch < 0 or singles_per_batch < 0 or sequences_per_batch + singles_per_batch == 0:
            raise ValueError(
                "SequenceBatchSampler: need sequences_per_batch >= 0, singles_per_batch >= 0 and at "
                f"least one of them > 0 (got {sequences_per_batch}, {singles_per_batch})"
            )
        if not 0 <= rank < world_size:
            raise ValueError(f"SequenceBatchSampler: rank {rank} not in [0, world_size={world_size})")
        self.S, self.n_singles, self.L = int(sequences_per_batch), int(singles_per_batch), int(sequence_length)
        self.shuffle, self.seed, self.rank, self.world_size = shuffle, int(seed), int(rank), int(world_size)
        self.drop_last, self.epoch = drop_last, 0
        subjects = list(dataset.subject_ids)
        name = getattr(dataset, "split", "this")
        if self.S > 0:
            self.sequences = [tuple(w) for w in dataset.windows(self.L)]
            if not self.sequences:
                raise ValueError(
                    f"SequenceBatchSampler: no patient in the {name!r} split has {self.L} studies, so "
                    "there are no sequences; use sequences_per_batch=0"
                )
            in_sequence = {subjects[w[0]] for w in self.sequences}
            self.pool = [i for i in range(len(dataset)) if subjects[i] not in in_sequence]
            if self.n_singles > 0 and not self.pool:
                raise ValueError(
                    f"SequenceBatchSampler: every patient of the {name!r} split has >= {self.L} studies, "
                    "so there are no single studies; use singles_per_batch=0"
                )
        else:
            self.sequences, self.pool = [], list(range(len(dataset)))
        self.sequence_subject = [subjects[w[0]] for w in self.sequences]
        self._plan_cache: tuple[int, list[list[int]]] | None = None

    def set_epoch(self, epoch: int) -> None:
        """Use the shuffle of ``epoch`` (call before iterating, as with DistributedSampler)."""
        self.epoch = int(epoch)

    def _rng(self) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.epoch])

    def _sequence_batches(self, rng: np.random.Generator, size: int) -> list[list[int]]:
        """Lists of sequence numbers, at most ``size`` each, no patient twice in one list.

        Each patient's k sequences are spread evenly over the epoch (the j-th of them at about position j/k,
        in a random order when shuffling), so a patient with many studies does not pile up at the end, where
        its sequences could only fill batches one at a time.
        """
        n = len(self.sequences)
        seq_subjects = np.asarray(self.sequence_subject)
        starts = np.flatnonzero(np.r_[True, seq_subjects[1:] != seq_subjects[:-1]]) if n else np.zeros(0, dtype=int)
        counts = np.diff(np.r_[starts, n])
        key = np.empty(n)
        for start, k in zip(starts.tolist(), counts.tolist()):
            if self.shuffle:
                key[start : start + k] = (rng.permutation(k) + rng.random(k)) / k
            else:
                key[start : start + k] = (np.arange(k) + 0.5) / k
        order = np.lexsort((rng.random(n) if self.shuffle else np.arange(n), key)).tolist()
        pending, batches = deque(order), []
        while pending:
            batch, subjects, deferred = [], set(), []
            while pending and len(batch) < size:
                j = pending.popleft()
                if self.sequence_subject[j] in subjects:
                    deferred.append(j)
                else:
                    batch.append(j)
                    subjects.add(self.sequence_subject[j])
            pending.extendleft(reversed(deferred))
            batches.append(batch)
        return batches

    def _plan(self) -> list[list[int]]:
        """This rank's batches for the current epoch (cached): its slice of every global batch."""
        if self._plan_cache is not None and self._plan_cache[0] == self.epoch:
            return self._plan_cache[1]
        rng = self._rng()
        W, r = self.world_size, self.rank
        drop = self.drop_last or W > 1  # every process must get a full share of every global batch
        singles = _Cycle(self.pool, rng, self.shuffle)
        batches: list[list[int]] = []
        if self.S > 0:
            for seq_numbers in self._sequence_batches(rng, self.S * W):
                if drop and len(seq_numbers) < self.S * W:
                    continue
                studies = {i for j in seq_numbers for i in self.sequences[j]}
                extra = singles.take(self.n_singles * W, exclude=studies)
                mine = seq_numbers[r * self.S : (r + 1) * self.S]
                batch: list[int] = [SequenceIndex(i, p) for j in mine for p, i in enumerate(self.sequences[j])]
                batch += extra[r * self.n_singles : (r + 1) * self.n_singles]
                batches.append(batch)
        else:
            order = rng.permutation(len(self.pool)).tolist() if self.shuffle else list(range(len(self.pool)))
            size = self.n_singles * W
            for start in range(0, len(order), size):
                chunk = [self.pool[k] for k in order[start : start + size]]
                if len(chunk) == size or not drop:
                    share = -(-len(chunk) // W)
                    batches.append(chunk[r * share : (r + 1) * share])
            batches = [b for b in batches if b]
        self._plan_cache = (self.epoch, batches)
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        yield from self._plan()

    def __len__(self) -> int:
        return len(self._plan())


class _Cycle:
    """Endless shuffled passes over ``items``; ``take(k)`` skips excluded and already-taken items."""

    def __init__(self, items: Sequence[int], rng: np.random.Generator, shuffle: bool):
        self.items, self.rng, self.shuffle = list(items), rng, shuffle
        self.item_set = set(self.items)
        self.queue: deque[int] = deque()

    def _refill(self) -> None:
        order = self.rng.permutation(len(self.items)).tolist() if self.shuffle else range(len(self.items))
        self.queue.extend(self.items[k] for k in order)

    def take(self, k: int, exclude: set[int]) -> list[int]:
        out: list[int] = []
        available = len(self.item_set) - len(self.item_set.intersection(exclude))
        if k > available:
            raise ValueError(
                f"SequenceBatchSampler: {k} singles per batch requested but only {available} single studies exist"
            )
        taken = set(exclude)
        skipped: list[int] = []
        while len(out) < k:
            if not self.queue:
                self._refill()
            item = self.queue.popleft()
            if item in taken:
                skipped.append(item)
            else:
                out.append(item)
                taken.add(item)
        self.queue.extendleft(reversed(skipped))
        return out
