"""python-dwca-reader's way: iterate the core rows with their multimedia extension rows into one table (one row
per image), as fungilib ingest produces. Runs in bench/work/peers-venv. Usage: python dwca_reader_ingest.py ZIP OUT"""

import sys

import pandas as pd
from dwca.read import DwCAReader

OCCURRENCE = ["gbifID", "speciesKey", "species", "genusKey", "genus", "familyKey", "family", "taxonKey", "taxonRank",
              "scientificName", "kingdom", "order", "basisOfRecord", "eventDate", "year", "countryCode",
              "decimalLatitude", "decimalLongitude", "recordedBy", "license", "rightsHolder"]
MEDIA = ["type", "format", "identifier", "license", "rightsHolder", "creator"]
MULTIMEDIA = "http://rs.gbif.org/terms/1.0/Multimedia"


def short(data: dict) -> dict:
    return {key.rsplit("/", 1)[-1]: value for key, value in data.items()}


def main() -> None:
    archive, out = sys.argv[1], sys.argv[2]
    rows = []
    with DwCAReader(archive) as dwca:
        for core in dwca:
            occ = short(core.data)
            base = {f"occ_{t}": occ.get(t, "") for t in OCCURRENCE}
            for ext in core.extensions:
                if ext.rowtype == MULTIMEDIA:
                    media = short(ext.data)
                    if media.get("type", "").lower() in ("stillimage", "image") and media.get("identifier"):
                        rows.append({**base, **{f"media_{t}": media.get(t, "") for t in MEDIA}})
    frame = pd.DataFrame(rows)
    frame.to_pickle(out)
    print(len(frame))


if __name__ == "__main__":
    main()
