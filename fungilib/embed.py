"""Stage embed: the pooled features of every photo of a manifest under one frozen base, computed once, so that
every head run of a sweep trains in seconds on them instead of running the base every epoch (linear probing, as
DINOv2, BioCLIP and the FungiTastic baselines compare backbones).

Each photo gets its centre crop (the evaluation transform, exactly what the exported model sees), and each training
photo optionally ``views`` augmented views (random crop, flip, colour jitter; seeded). Photos are streamed in parts of
``part_rows``: memory holds one batch of photos at a time, every finished part is on disk, and a killed run resumes
from its last complete part."""

from __future__ import annotations

import resource
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fungilib.artifacts import embeddings as files
from fungilib.artifacts.dataset import load_manifest
from fungilib.artifacts.stage_folder import prepare_output
from fungilib.data_version import source_version
from fungilib.errors import FungilibError
from fungilib.input_pipeline import Augmentation, decode_file, make_dataset, train_transform


@dataclass
class EmbedParams:
    manifest: Path = Path("")  # a clean (or import-folder) stage's folder
    out: Path = Path("")
    base: str = "EfficientNetLite0"  # fungilib.models.BASES
    weights: str = "imagenet"  # imagenet or a weights file (a frozen base: "none" would embed random features)
    image_size: int = 128
    batch_size: int = 64
    views: int = 0  # augmented views per training photo, beside its centre crop
    seed: int = 0
    part_rows: int = 2048  # rows per part on disk: what a killed run may lose

    def __post_init__(self) -> None:
        if self.weights == "none":
            raise FungilibError("weights: none would embed a random network's features; use imagenet or a file")
        if self.image_size < 32 or self.batch_size < 1 or self.views < 0 or self.part_rows < self.batch_size:
            raise FungilibError("image_size must be >= 32, batch_size >= 1, views >= 0 and part_rows >= batch_size")


@dataclass
class EmbedResult:
    out: Path
    rows: int
    dims: int
    seconds: float
    resumed_parts: int
    skipped: bool = False


def embedding_rows(manifest: pd.DataFrame, views: int) -> pd.DataFrame:
    """Every photo once (view 0: its centre crop), then ``views`` augmented views of each training photo."""
    rows = manifest.assign(view=0)
    extra = [manifest[manifest["split"] == "train"].assign(view=v) for v in range(1, views + 1)]
    return pd.concat([rows, *extra], ignore_index=True)


def _views(frame: pd.DataFrame, size: int, batch_size: int, seed: int) -> Any:
    import tensorflow as tf

    aug = Augmentation(jitter_in="pipeline")
    tf.random.set_seed(seed)
    paths = tf.data.Dataset.from_tensor_slices(frame["path"].astype(str).to_numpy())
    return paths.map(lambda p: train_transform(decode_file(p), size, aug)).batch(batch_size)


def embed(params: EmbedParams) -> EmbedResult:
    """Embed every photo of ``params.manifest`` into ``params.out``; a finished folder with the same inputs is
    kept as it is, an unfinished one resumes."""
    from tqdm.auto import tqdm

    from fungilib.model_outputs import with_embeddings
    from fungilib.models import build_classifier

    out = prepare_output(Path(params.out), "embed")
    manifest, labels = load_manifest(params.manifest)
    described = {"base": params.base, "weights": params.weights, "image_size": params.image_size,
                 "views": params.views, "seed": params.seed, "manifest": str(Path(params.manifest).resolve()),
                 "manifest_version": source_version(params.manifest), "classes": len(labels)}
    if files.is_embedded(out):
        done = files.load_embeddings(out)
        if all(done.info.get(k) == v for k, v in described.items()):
            return EmbedResult(out, len(done.index), int(done.info["dims"]), 0.0, 0, skipped=True)
        raise FungilibError(f"{out}: holds embeddings of other inputs ({_difference(done.info, described)}); choose "
                            "another --out or remove it")
    rows = embedding_rows(manifest, params.views)
    net = with_embeddings(build_classifier(params.base, params.weights, params.image_size, len(labels), 0.0,
                                           bn_inference=True)[0])
    dims = int(net.outputs[1].shape[-1])
    parts = int(np.ceil(len(rows) / params.part_rows))
    start, resumed = time.perf_counter(), 0
    with tqdm(total=len(rows), unit="photo", desc="embedding") as bar:
        for number in range(parts):
            chunk = rows.iloc[number * params.part_rows:(number + 1) * params.part_rows]
            if files.part_file(out, number).exists():
                resumed += 1
                bar.update(len(chunk))
                continue
            centre = chunk[chunk["view"] == 0]
            done = []
            if len(centre):
                ds = make_dataset(centre, len(labels), params.image_size, params.batch_size, training=False)
                done.append(np.asarray(net.predict(ds.map(lambda x, y: x), verbose=0)[1]))
            if len(centre) < len(chunk):
                views = chunk[chunk["view"] > 0]
                done.append(np.asarray(net.predict(_views(views, params.image_size, params.batch_size,
                                                          params.seed + number), verbose=0)[1]))
            files.write_part(out, number, np.concatenate(done))
            bar.update(len(chunk))
    files.join_parts(out, parts, len(rows), dims)
    seconds = time.perf_counter() - start
    index = rows[["media_id", "split", "label", "view"]].assign(row=np.arange(len(rows)))
    files.write_finished(out, index, {**described, "dims": dims, "rows": len(rows), "seconds": round(seconds, 1),
                                      "resumed_parts": resumed, "peak_rss_mb": round(
                                          resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
                                      "crop": "centre (the evaluation transform); views: random crop, flip, jitter"})
    return EmbedResult(out, len(rows), dims, round(seconds, 1), resumed)


def _difference(have: dict[str, Any], want: dict[str, Any]) -> str:
    return "; ".join(f"{k} {have.get(k)!r}, asked {v!r}" for k, v in want.items() if have.get(k) != v)


def plot_embeddings(embeddings: files.Embeddings, per_split: int = 2000) -> Path:
    """The centre-crop embeddings of each split on their first two principal directions, coloured by class
    (at most ``per_split`` points each); saved beside them."""
    from fungilib.plotting import plt, save_figure

    splits = [s for s in ("train", "val", "test") if (embeddings.index["split"] == s).any()]
    fig, axes = plt.subplots(1, len(splits), figsize=(4 * len(splits), 3.6), squeeze=False)
    train, _ = embeddings.rows("train")
    centre = train.mean(axis=0)
    directions = np.linalg.svd(train[:per_split] - centre, full_matrices=False)[2][:2].T
    for ax, split in zip(axes[0], splits, strict=True):
        x, y = embeddings.rows(split)
        x, y = x[:per_split], y[:per_split]
        xy = (x - centre) @ directions
        ax.scatter(xy[:, 0], xy[:, 1], c=y, cmap="tab20", s=6, alpha=0.7)
        ax.set(title=f"{split} ({len(x)} photos)", xticks=[], yticks=[])
    fig.suptitle(f"{embeddings.info['base']} features, {embeddings.info['image_size']} px, by class")
    path = save_figure(fig, embeddings.folder / files.PLOT)
    plt.close(fig)
    return path
