"""Download side by side: fungilib's downloader vs img2dataset on the same URL list, same server, same run.

The sample server runs in its own process with a fixed latency per response and serves realistic photos
(--image-size 1280: ≈ 100–300 KB JPEGs); both tools resize to the same longest side (512) and save JPEGs.
Both at their default concurrency (fungilib: 32 workers, 16 per host; img2dataset: 1 process × 256 threads).
Runs alternate between the tools; medians of --repeats. img2dataset lives in its own venv
(bench/work/peers-venv, made by `make bench`), so its dependencies never touch the project's.

Usage: .venv/bin/python bench/download_vs_img2dataset.py [--observations 1100] [--latency 0.05]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

HERE = Path(__file__).resolve().parent
PEERS = HERE / "work" / "peers-venv" / "bin"
sys.path.insert(0, str(HERE))
from download_loopback import _free_port, _wait_for  # noqa: E402


def _img2dataset(urls: Path, out: Path, max_side: int) -> tuple[float, int]:
    shutil.rmtree(out, ignore_errors=True)
    cmd = [str(PEERS / "img2dataset"), "--url_list", str(urls), "--input_format", "txt", "--output_format", "files",
           "--output_folder", str(out), "--image_size", str(max_side), "--resize_mode", "keep_ratio_largest",
           "--resize_only_if_bigger", "True", "--enable_wandb", "False"]
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=1800,
                   env={**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1", "no_proxy": "127.0.0.1"})
    seconds = time.perf_counter() - start
    return seconds, len(list(out.rglob("*.jpg")))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--observations", type=int, default=1100)
    parser.add_argument("--image-size", type=int, default=1280)
    parser.add_argument("--latency", type=float, default=0.05)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if not (PEERS / "img2dataset").exists():
        sys.exit("img2dataset is not installed: run `make bench` (it builds bench/work/peers-venv)")
    from fungilib.artifacts.observations import load_observations
    from fungilib.download import DownloadParams, download_images
    from fungilib.ingest import IngestParams, ingest
    from fungilib.sample import SampleSpec, generate_sample

    work = HERE / "work" / f"vs-img2dataset-{args.observations}-{args.image_size}"
    if (work / "port.json").exists() and (work / "ingest" / "observations.h5").exists():
        port = json.loads((work / "port.json").read_text())["port"]  # the archive's URLs name this port
    else:
        port = _free_port()
        shutil.rmtree(work, ignore_errors=True)
        generate_sample(SampleSpec(out=work / "sample", observations=args.observations, image_size=args.image_size,
                                   base_url=f"http://127.0.0.1:{port}"))
        ingest(IngestParams(work / "sample" / "fungi-sample.zip", work / "ingest"))
        (work / "port.json").write_text(json.dumps({"port": port}))
    obs = load_observations(work / "ingest")
    urls = obs["url"].dropna().drop_duplicates()
    urls = urls[urls.str.startswith("http://127.0.0.1")]
    (work / "urls.txt").write_text("\n".join(urls) + "\n")
    media = list((work / "sample" / "media").rglob("*.jpg"))
    avg_kb = sum(p.stat().st_size for p in media) / 1024 / max(1, len(media))
    server = subprocess.Popen([sys.executable, "-m", "fungilib.cli", "sample", "serve", "--out", str(work / "sample"),
                               "--port", str(port), "--no-faults", "--latency", str(args.latency)],
                              stdout=subprocess.DEVNULL)
    defaults = DownloadParams(observations=work / "ingest", out=work / "x")
    runs: dict[str, list[dict]] = {"fungilib": [], "img2dataset": []}
    try:
        _wait_for(port)
        for i in range(args.repeats):
            out = work / f"fungilib-{i}"
            shutil.rmtree(out, ignore_errors=True)
            result = download_images(DownloadParams(observations=work / "ingest", out=out, allow_hosts=["127.0.0.1"]))
            runs["fungilib"].append({"seconds": result.seconds, "images": result.ok,
                                     "images_per_second": result.ok / result.seconds})
            seconds, images = _img2dataset(work / "urls.txt", work / f"img2dataset-{i}", defaults.max_side)
            runs["img2dataset"].append({"seconds": seconds, "images": images, "images_per_second": images / seconds})
    finally:
        server.terminate()
        server.wait()
    medians = {k: statistics.median(r["images_per_second"] for r in v) for k, v in runs.items()}
    bound = defaults.per_host / args.latency if args.latency else None
    result = {"benchmark": "download_vs_img2dataset", "date": str(date.today()),
              "machine": f"{platform.machine()}, {os.cpu_count()} cores", "urls": len(urls),
              "source_kb": round(avg_kb, 1), "latency_s": args.latency, "max_side": defaults.max_side,
              "fungilib_concurrency": f"{defaults.workers} workers, {defaults.per_host} per host",
              "img2dataset_concurrency": "1 process x 256 threads (defaults)", "median_images_per_second": medians,
              "ratio": medians["fungilib"] / medians["img2dataset"],
              "fungilib_bound_images_per_second": bound,
              "fungilib_share_of_bound": medians["fungilib"] / bound if bound else None, "runs": runs}
    (HERE / "results" / "download_vs_img2dataset.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"\n{len(urls)} URLs, {avg_kb:.0f} KB photos, {args.latency * 1000:.0f} ms latency, resized to "
          f"{defaults.max_side} px; medians of {args.repeats}")
    print("| tool | images saved | median images/s | ratio |")
    print("|---|---|---|---|")
    for tool in ("fungilib", "img2dataset"):
        print(f"| {tool} | {runs[tool][0]['images']} | {medians[tool]:.1f} | "
              f"{medians[tool] / medians['img2dataset']:.2f} |")
    if bound:
        print(f"fungilib's concurrency bound: {defaults.per_host} per host / {args.latency} s = {bound:.0f} images/s; "
              f"reached {medians['fungilib'] / bound:.0%}")


if __name__ == "__main__":
    main()
