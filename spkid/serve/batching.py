"""Micro-batching: concurrent requests share the embedder's forward passes.

Requests put their clips' features on a queue and await a future. One worker thread takes whatever is queued (at
most ``max_batch`` clips; it never waits for more: while it computes one batch the next one fills up), embeds them
in one ``embed_raw`` call (length-bucketed and padded there, padding masked), and hands each request its rows. Under
load the batches grow by themselves; a lone request is not delayed.
"""
from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future

import torch

_STOP = object()


class EmbedBatcher:
    """``await batcher.embed(feats)`` -> ``(N, E)`` embeddings of features ``[(T_i, F)]``, computed in shared batches.

    Args:
        embed_fn (callable): features ``[(T_i, F)]`` -> ``(N, E)`` tensor (e.g. L2-normalised ``Model.embed_raw``).
        max_batch (int): clips per call of ``embed_fn`` at most; one request's clips are never split.
    """

    def __init__(self, embed_fn: Callable[[Sequence[torch.Tensor]], torch.Tensor], max_batch: int = 64):
        self.embed_fn, self.max_batch = embed_fn, max_batch
        self._queue: queue.Queue = queue.Queue()
        self._carry = None                                   # a job taken but left for the next batch
        self.batches = 0                                     # calls of embed_fn
        self.clips = 0                                       # clips embedded
        self.largest = 0                                     # most clips in one call
        self._thread = threading.Thread(target=self._run, name="spkid-embed", daemon=True)
        self._thread.start()

    async def embed(self, feats: Sequence[torch.Tensor]) -> torch.Tensor:
        if not feats:
            raise ValueError("embed: no clips")
        fut: Future = Future()
        self._queue.put((list(feats), fut))
        return await asyncio.wrap_future(fut)

    def close(self) -> None:
        """Finish the queued work, then stop the worker."""
        self._queue.put(_STOP)
        self._thread.join()

    def _take(self) -> list | None:
        """The next batch of jobs ``[(feats, future)]``: block for the first, then drain without waiting."""
        first = self._carry if self._carry is not None else self._queue.get()
        self._carry = None
        if first is _STOP:
            return None
        jobs, n = [first], len(first[0])
        while n < self.max_batch:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                break
            if job is _STOP or n + len(job[0]) > self.max_batch:
                self._carry = job                            # next round (and _STOP only after this batch)
                break
            jobs.append(job)
            n += len(job[0])
        return jobs

    def _run(self) -> None:
        while (jobs := self._take()) is not None:
            # a request whose client went away was cancelled: skip it; the rest can no longer be cancelled
            jobs = [(fs, fut) for fs, fut in jobs if fut.set_running_or_notify_cancel()]
            if not jobs:
                continue
            feats = [f for fs, _ in jobs for f in fs]
            try:
                emb = self.embed_fn(feats)                   # (N, E)
            except BaseException as e:                       # every waiting request gets the error, the worker lives
                for _, fut in jobs:
                    fut.set_exception(e)
                continue
            self.batches += 1
            self.clips += len(feats)
            self.largest = max(self.largest, len(feats))
            start = 0
            for fs, fut in jobs:
                fut.set_result(emb[start:start + len(fs)])
                start += len(fs)

    def stats(self) -> dict:
        return {"batches": self.batches, "clips": self.clips, "largest_batch": self.largest,
                "mean_batch": round(self.clips / self.batches, 2) if self.batches else 0.0,
                "queued": self._queue.qsize()}
