"""The bottom layer: every stage output's files, readers and writers — the run-folder contract in one place.

Stage modules import this package (and the shared helpers), never each other; no other module spells a file
name of a stage's folder."""
