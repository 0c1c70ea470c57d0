"""Stage 2, download: every image URL of observations.h5 → a resized RGB JPEG, with a per-image status table."""

from __future__ import annotations

import json
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

import pandas as pd
from tqdm.auto import tqdm

from fungilib.artifacts.downloads import (
    DOWNLOAD_CLAIM,
    DOWNLOAD_SUMMARY,
    DOWNLOADS_CSV,
    DOWNLOADS_FILE,
    IMAGES_DIR,
    LOG_FILE,
    is_permanent,
    reason_kind,
)
from fungilib.artifacts.observations import STAGE_PARAMS, load_observations
from fungilib.artifacts.stage_folder import prepare_output
from fungilib.claims import claim, holder
from fungilib.download_params import DownloadParams, DownloadResult
from fungilib.download_report import plot_download_report
from fungilib.download_shards import download_on_cluster
from fungilib.errors import FungilibError
from fungilib.fsutil import remove_stale_temps, write_hdf, write_json
from fungilib.http_client import Fetcher
from fungilib.params import write_params
from fungilib.photo_fetch import (
    DISK_FULL,
    DiskFull,
    PixelBudget,
    disk_full_error,
    fetch_one,
    image_path,
    is_complete_jpeg,
    read_log,
)

__all__ = ["DownloadParams", "DownloadResult", "download_images"]


def download_images(params: DownloadParams) -> DownloadResult:
    """Download, check, orient, convert and resize every image of ``params.observations`` into ``params.out``.

    Resumable: a complete file already saved is not requested again; failures recorded as permanent (404, not an
    image, undecodable) are not retried unless ``retry_failed``. Writes are atomic. Returns the summary and writes
    ``downloads.h5`` (key ``downloads``, one row per media_id), ``downloads.csv`` and ``download_summary.json``.
    """
    out = prepare_output(Path(params.out), "download")
    with claim(out, name=DOWNLOAD_CLAIM) as mine:
        if not mine:
            raise FungilibError(f"{out}: another download is writing here ({holder(out, DOWNLOAD_CLAIM)}); wait for "
                                "it, or choose another --out")
        return _download_claimed(params, out)


def _download_claimed(params: DownloadParams, out: Path) -> DownloadResult:
    start = time.perf_counter()
    remove_stale_temps(out / IMAGES_DIR)  # only this process writes here: leftovers are a killed run's
    obs = load_observations(params.observations)
    if params.limit:
        obs = obs.head(params.limit)
    urls = obs.drop_duplicates("url")[["url", "media_id", "taxonKey"]]
    log_path = out / LOG_FILE
    previous = read_log(log_path)
    results: dict[str, dict] = {}
    todo: list[tuple[str, Path]] = []
    for url, media_id, taxon_key in urls.itertuples(index=False):
        try:
            target = image_path(out, taxon_key, media_id)
        except FungilibError as exc:
            results[url] = {"status": "failed", "reason": f"unsafe id: {exc}", "path": ""}
            continue
        rel = str(target.relative_to(out))
        prev = previous.get(url, {})
        if target.exists() and is_complete_jpeg(target):
            results[url] = {**prev, "status": "ok", "reason": "", "path": rel, "cached": True}
        elif prev.get("status") == "failed" and is_permanent(prev.get("reason", "")) and not params.retry_failed:
            results[url] = {**prev, "cached": True}
        else:
            todo.append((url, target))

    if params.scheduler or params.local_cluster:
        fetched_by = download_on_cluster(params, out, todo, results, len(urls))
        return _finish(params, out, obs, results, todo, fetched_by, start)
    fetcher = Fetcher(params)
    budget = PixelBudget(params.decode_budget_pixels)

    def work(url: str, target: Path) -> dict:
        return fetch_one(fetcher, params, out, url, target, budget)

    # unbuffered: a record is on disk once written, and a write that fails (a full disk) leaves nothing behind
    # to fail again when the file is closed
    with open(log_path, "ab", buffering=0) as log, ThreadPoolExecutor(params.workers) as pool, tqdm(
        total=len(urls), initial=len(results), desc="downloading", unit="img", smoothing=0.05
    ) as bar:
        futures = [pool.submit(work, url, target) for url, target in todo]
        try:
            for future in as_completed(futures):
                rec = future.result()
                results[rec["url"]] = rec
                log.write((json.dumps(rec) + "\n").encode())
                bar.update(1)
        except (KeyboardInterrupt, DiskFull, OSError) as exc:
            for f in futures:
                f.cancel()
            if isinstance(exc, KeyboardInterrupt):
                raise
            if isinstance(exc, OSError) and exc.errno not in DISK_FULL:
                raise
            raise disk_full_error(out, results, exc) from None
    return _finish(params, out, obs, results, todo, fetcher.requests, start)


def _finish(params: DownloadParams, out: Path, obs: pd.DataFrame, results: dict[str, dict],
            todo: list[tuple[str, Path]], requests: int, start: float) -> DownloadResult:
    table = _results_table(obs, results)
    write_hdf(out / DOWNLOADS_FILE, {"downloads": table})
    table.to_csv(out / DOWNLOADS_CSV, index=False)
    seconds = time.perf_counter() - start
    fetched = len(todo)
    reasons = Counter(reason_kind(r) for r in table.loc[table["status"] != "ok", "reason"])
    result = DownloadResult(
        downloads=out / DOWNLOADS_FILE,
        ok=int((table["status"] == "ok").sum()),
        failed=int((table["status"] != "ok").sum()),
        cached=int(table["cached"].sum()),
        requested=requests,
        reasons=dict(reasons.most_common()),
        seconds=round(seconds, 2),
        images_per_second=round(fetched / seconds, 1) if fetched else 0.0,
    )
    write_json(out / DOWNLOAD_SUMMARY, {**result.__dict__, "downloads": str(result.downloads)})
    plot_download_report(out, table, since=time.time() - seconds)
    write_params(out / STAGE_PARAMS, params)
    return result


def _results_table(obs: pd.DataFrame, results: dict[str, dict]) -> pd.DataFrame:
    """One row per media_id: images shared by several observations point at the one saved file."""
    columns = ["status", "reason", "path", "cached", "attempts", "bytes", "width", "height", "orig_width",
               "orig_height", "seconds"]
    per_url = pd.DataFrame.from_dict(results, orient="index").reindex(columns=columns)
    per_url.index.name = "url"
    table = obs[["media_id", "url"]].merge(per_url, left_on="url", right_index=True, how="left")
    table["status"] = table["status"].fillna("failed")
    table["reason"] = table["reason"].fillna("").astype(str)
    table["path"] = table["path"].fillna("").astype(str)
    table["cached"] = table["cached"].fillna(False).astype(bool)
    for name in columns[4:]:
        table[name] = pd.to_numeric(table[name], errors="coerce").fillna(0).astype("float64")
    return table.reset_index(drop=True)
