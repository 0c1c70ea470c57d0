"""The download stage's parameters and what it returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from fungilib.errors import FungilibError
from fungilib.host_policy import HostPolicy


@dataclass
class DownloadParams:
    """How to fetch: concurrency, patience, limits, and the size images are saved at."""

    observations: Path
    out: Path
    max_side: int = 512
    jpeg_quality: int = 90
    workers: int = 32
    per_host: int = 16
    timeout: float = 10.0
    retries: int = 2
    backoff: float = 0.5
    max_bytes: int = 30_000_000
    max_pixels: int = 100_000_000
    # megapixels decoded at once by all of a process's workers (memory then stays bounded whatever `workers` is);
    # at least max_pixels, so every photo allowed fits
    decode_budget_mp: int = 150
    limit: int = 0
    retry_failed: bool = False
    deadline: float = 60.0  # seconds one attempt at a photo may take in all (a server trickling bytes is cut off)
    allow_hosts: list[str] = field(default_factory=list)  # non-public hosts that may be fetched (see host_policy)
    # several machines: the photos in shards of shard_size, each a task on a Dask cluster writing into the same
    # (shared) folder; `workers` is then the concurrency of each task
    scheduler: str = ""  # an existing Dask scheduler, e.g. tcp://host:8786
    local_cluster: int = 0  # or a Dask LocalCluster of this many worker processes
    shard_size: int = 1000

    def __post_init__(self) -> None:
        if self.scheduler and self.local_cluster:
            raise FungilibError("scheduler and local_cluster: choose one (an existing Dask cluster, or a local one)")
        if self.local_cluster < 0 or self.shard_size < 1:
            raise FungilibError("local_cluster must be >= 0 and shard_size >= 1")
        for name in ("max_side", "workers", "per_host", "max_bytes", "max_pixels", "decode_budget_mp"):
            if getattr(self, name) < 1:
                raise FungilibError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not 1 <= self.jpeg_quality <= 100:
            raise FungilibError(f"jpeg_quality must be in 1..100, got {self.jpeg_quality}")
        if self.timeout <= 0 or self.retries < 0 or self.backoff < 0 or self.limit < 0:
            raise FungilibError("timeout must be > 0, and retries, backoff and limit >= 0")
        if self.deadline < self.timeout:
            raise FungilibError(f"deadline ({self.deadline:g} s) must be at least timeout ({self.timeout:g} s)")
        HostPolicy.validate(self.allow_hosts)

    @property
    def decode_budget_pixels(self) -> int:
        return max(self.decode_budget_mp * 1_000_000, self.max_pixels)


@dataclass
class DownloadResult:
    downloads: Path
    ok: int
    failed: int
    cached: int
    requested: int
    reasons: dict[str, int]
    seconds: float
    images_per_second: float
