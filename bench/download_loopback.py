"""Download throughput on loopback: `download_images` at its default settings against the sample's server.

Usage: .venv/bin/python bench/download_loopback.py [--observations 700] [--image-size 256] [--latency 0]
       [--local-cluster N]   (the same download in shards on a Dask LocalCluster of N workers, cluster start included)
The server runs in its own process (as a remote host would), with the planted faults switched off.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import socket
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_for(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.1)
    sys.exit(f"server on port {port} did not start")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--observations", type=int, default=700)
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--latency", type=float, default=0.0, help="seconds the server waits before each response")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out-name", default="", help="results file name (without .json)")
    parser.add_argument("--local-cluster", type=int, default=0, help="Dask LocalCluster workers (0: one process)")
    parser.add_argument("--shard-size", type=int, default=250)
    args = parser.parse_args()
    from fungilib.download import DownloadParams, download_images
    from fungilib.ingest import IngestParams, ingest
    from fungilib.sample import SampleSpec, generate_sample

    port = _free_port()
    work = HERE / "work" / f"download-{args.observations}-{args.image_size}"
    shutil.rmtree(work, ignore_errors=True)
    sample = generate_sample(SampleSpec(out=work / "sample", observations=args.observations,
                                        image_size=args.image_size, base_url=f"http://127.0.0.1:{port}"))
    ingest(IngestParams(sample.archive, work / "ingest"))
    server = subprocess.Popen([sys.executable, "-m", "fungilib.cli", "sample", "serve", "--out", str(work / "sample"),
                               "--port", str(port), "--no-faults", "--latency", str(args.latency)],
                              stdout=subprocess.DEVNULL)
    rows = []
    try:
        _wait_for(port)
        for i in range(args.repeats):
            result = download_images(DownloadParams(observations=work / "ingest", out=work / f"download-{i}",
                                                    allow_hosts=["127.0.0.1"], local_cluster=args.local_cluster,
                                                    shard_size=args.shard_size))
            rows.append({"seconds": result.seconds, "images": result.ok, "images_per_second": result.images_per_second})
    finally:
        server.terminate()
        server.wait()
    defaults = DownloadParams(observations=work / "ingest", out=work)
    median = sorted(r["images_per_second"] for r in rows)[len(rows) // 2]
    avg_kb = sum(p.stat().st_size for p in sample.media_dir.rglob("*.jpg")) / 1024 / max(
        1, len(list(sample.media_dir.rglob("*.jpg"))))
    result = {"benchmark": "download_loopback", "date": str(date.today()), "machine": f"{platform.machine()}, 2 cores",
              "images": rows[0]["images"], "source_kb": round(avg_kb, 1), "latency_s": args.latency,
              "local_cluster": args.local_cluster, "workers": defaults.workers, "per_host": defaults.per_host,
              "max_side": defaults.max_side,
              "median_images_per_second": median, "runs": rows}
    (HERE / "results").mkdir(exist_ok=True)
    name = args.out_name or ("download_loopback" + (f"_cluster{args.local_cluster}" if args.local_cluster else ""))
    (HERE / "results" / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    where = f"Dask LocalCluster x{args.local_cluster}" if args.local_cluster else "one process"
    print("\n| where | images | source KB | latency s | workers / per host | max_side "
          f"| median img/s ({args.repeats} runs) |")
    print("|---|---|---|---|---|---|---|")
    print(f"| {where} | {result['images']} | {result['source_kb']} | {args.latency} | {defaults.workers} / "
          f"{defaults.per_host} | {defaults.max_side} | {median} |")


if __name__ == "__main__":
    main()
