"""The download stage on a Dask cluster: the photos in shards, each a task writing into the same (shared) folder
with its own log; progress counted as each shard lands."""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

from tqdm.auto import tqdm

from fungilib.artifacts.downloads import LOG_FILE, SHARD_LOGS
from fungilib.dask_cluster import dask_client
from fungilib.download_params import DownloadParams
from fungilib.errors import plain_message
from fungilib.http_client import Fetcher
from fungilib.photo_fetch import DiskFull, PixelBudget, disk_full_error, fetch_one, is_complete_jpeg, read_log


def download_shard(params: DownloadParams, out: Path, items: list[tuple[str, str]]) -> dict[str, int]:
    """One Dask task: fetch ``items`` (url, path inside ``out``) with ``params.workers`` threads, each record
    appended to this task's own log. A photo already saved whole (by an earlier attempt of this task, on a worker
    that died) is not fetched again."""
    fetcher = Fetcher(params)
    log_path = out / SHARD_LOGS.replace("*", f"{os.getpid()}-{uuid.uuid4().hex[:8]}")
    saved = {url for url, rel in items if (out / rel).exists() and is_complete_jpeg(out / rel)}
    with open(log_path, "ab", buffering=0) as log, ThreadPoolExecutor(params.workers) as pool:
        for url, rel in items:
            if url in saved:
                log.write((json.dumps({"url": url, "path": rel, "status": "ok", "reason": "", "cached": True})
                           + "\n").encode())
        budget = PixelBudget(params.decode_budget_pixels)
        futures = [pool.submit(fetch_one, fetcher, params, out, url, out / rel, budget)
                   for url, rel in items if url not in saved]
        for future in as_completed(futures):
            log.write((json.dumps(future.result()) + "\n").encode())
    return {"requests": fetcher.requests, "items": len(items)}


def download_on_cluster(params: DownloadParams, out: Path, todo: list[tuple[str, Path]], results: dict[str, dict],
                         total: int) -> int:
    """``todo`` in shards on a Dask cluster (``params.scheduler`` or a LocalCluster), progress counted as each shard
    lands; the shards' logs are merged into ``results`` at the end. Returns the requests made. The images folder
    must be one every worker writes to (a shared file system, as sweeps require); each file is written atomically."""
    from dask.distributed import as_completed as landed

    items = [(url, str(target.relative_to(out))) for url, target in todo]
    shards = [items[i:i + params.shard_size] for i in range(0, len(items), params.shard_size)]
    requests = 0
    with contextlib.ExitStack() as stack:
        client = stack.enter_context(dask_client(params.scheduler, params.local_cluster))
        bar = stack.enter_context(tqdm(total=total, initial=len(results), desc="downloading", unit="img",
                                       smoothing=0.05))
        futures = {client.submit(download_shard, params, out, shard, pure=False): shard for shard in shards}
        broken: dict[str, str] = {}
        for future in landed(futures):
            try:
                requests += future.result()["requests"]
            except DiskFull as exc:
                client.cancel(list(futures))
                raise disk_full_error(out, results, exc) from None
            except Exception as exc:  # a task that failed: its photos are recorded as such, the others go on
                reason = f"error (shard task: {type(exc).__name__}: {plain_message(str(exc))})"
                broken.update({url: reason for url, _ in futures[future]})
            bar.update(len(futures[future]))
    merged = read_log(out / LOG_FILE)
    for url, _ in items:
        failed = {"url": url, "path": "", "status": "failed", "cached": False,
                  "reason": broken.get(url, "error (its shard task did not finish)")}
        results[url] = failed if url in broken else merged.get(url, failed)
    return requests
