"""The Darwin Core / GBIF terms fungilib reads, in their canonical spelling, and their namespaces: one list for
the archive reader, ingest and the sample writer."""

from __future__ import annotations

DWC = "http://rs.tdwg.org/dwc/terms/"
GBIF = "http://rs.gbif.org/terms/1.0/"
DC = "http://purl.org/dc/terms/"

# Occurrence core terms ingest reads (the sample writes these and more, as a real export does).
OCCURRENCE_TERMS = [
    "gbifID", "occurrenceID", "basisOfRecord", "eventDate", "year", "decimalLatitude", "decimalLongitude",
    "countryCode", "kingdom", "phylum", "class", "order", "family", "genus", "species", "specificEpithet",
    "taxonKey", "speciesKey", "genusKey", "familyKey", "scientificName", "acceptedScientificName", "taxonRank",
    "license", "rightsHolder", "recordedBy", "associatedMedia",
]
# Multimedia extension terms ingest reads.
MEDIA_TERMS = ["type", "format", "identifier", "accessURI", "references", "created", "creator", "license",
               "rightsHolder"]
# Every term fungilib reads; headers of simple archives often spell them in lower case.
KNOWN_TERMS = list(dict.fromkeys(OCCURRENCE_TERMS + MEDIA_TERMS))
