"""EDA tables on a hand-made table and plots on the sample."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from fungilib.eda import EdaParams, class_counts, cut_table, license_counts, pareto_curve, run_eda


def _obs() -> pd.DataFrame:
    rows = []
    for species, n in [("A a", 8), ("B b", 4), ("C c", 2), ("D d", 1)]:
        for i in range(n):
            rows.append({"media_id": f"{species}-{i}", "gbifID": f"{species}-{i // 2}", "species": species,
                         "scientificName": species, "taxonRank": "SPECIES", "genus": species[0], "family": "F",
                         "license": "http://creativecommons.org/licenses/by/4.0/"})
    rows.append({**rows[0], "media_id": "g", "gbifID": "g", "species": "", "scientificName": "Russula",
                 "taxonRank": "GENUS"})
    return pd.DataFrame(rows)


def test_counts_pareto_and_cut_table() -> None:
    counts = class_counts(_obs())
    assert counts["name"].tolist() == ["A a", "B b", "C c", "D d"]
    assert counts["images"].tolist() == [8, 4, 2, 1] and counts["observations"].tolist() == [4, 2, 1, 1]
    assert len(class_counts(_obs(), species_only=False)) == 5
    pareto = pareto_curve(counts)
    assert pareto["image_share"].tolist() == [8 / 15, 12 / 15, 14 / 15, 1.0]
    cuts = cut_table(counts, [1, 2, 5, 10])
    assert cuts[["classes", "images"]].values.tolist() == [[4, 15], [3, 14], [1, 8], [0, 0]]
    photo = 512 * 384 * 0.3  # one 4:3 photo saved at max_side 512, ~0.3 bytes a pixel at JPEG quality 90
    assert cuts["disk_gb_at_512px"].tolist() == [round(n * photo / 1e9, 3) for n in (15, 14, 8, 0)]
    assert cut_table(counts, [1], max_side=96)["disk_gb_at_96px"].iloc[0] == round(15 * 96 * 72 * 0.3 / 1e9, 3)
    assert license_counts(_obs()).to_dict() == {"CC-BY": 16}


def test_run_eda_writes_plots_and_tables(pipeline, tmp_path: Path) -> None:
    result = run_eda(EdaParams(pipeline.root / "ingest", tmp_path))
    assert set(result.plots) == {"pareto", "class_histogram", "class_counts", "photos_and_licenses", "map", "cut_table"}
    for path in result.plots.values():
        assert path.stat().st_size > 5_000 and path.read_bytes()[:4] == b"\x89PNG"
    assert result.summary["classes"] == 12
    assert result.summary["top_20pct_classes_image_share"] > 0.4
    assert (tmp_path / "cut_table.csv").exists() and (tmp_path / "class_counts.csv").exists()
