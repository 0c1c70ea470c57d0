"""The raw-pyarrow floor: pyarrow.csv.read_csv of occurrence.txt and multimedia.txt from the zip with only the
needed columns, images filtered and joined to their occurrence. Usage: python pyarrow_ingest.py ZIP OUT"""

import sys
import zipfile

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as csv
import pyarrow.parquet as pq

from fungilib.ingest import INGESTED_MEDIA_TERMS, INGESTED_TERMS


def read(archive: zipfile.ZipFile, name: str, wanted: list[str]) -> pa.Table:
    with archive.open(name) as handle:
        header = handle.readline().decode().rstrip("\n").split("\t")
    columns = [c for c in wanted if c in header]
    with archive.open(name) as handle:
        return csv.read_csv(handle, parse_options=csv.ParseOptions(delimiter="\t", quote_char=False),
                            convert_options=csv.ConvertOptions(include_columns=columns,
                                                               column_types={c: pa.string() for c in columns}))


def main() -> None:
    with zipfile.ZipFile(sys.argv[1]) as archive:
        occ = read(archive, "occurrence.txt", INGESTED_TERMS)
        media = read(archive, "multimedia.txt", ["gbifID", *INGESTED_MEDIA_TERMS])
    media = media.filter(pc.equal(pc.utf8_lower(media["type"]), "stillimage"))
    joined = media.join(occ, "gbifID", right_suffix="_occ")
    pq.write_table(joined, sys.argv[2])
    print(joined.num_rows)


if __name__ == "__main__":
    main()
