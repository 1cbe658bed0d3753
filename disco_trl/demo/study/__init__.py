"""`disco-trl study`: where DisCO's design should show, measured on the demo task (docs/study.md).

`command` runs (or reuses) the study's runs; `report` summarises them, `markdown` writes the tables and `plots` the
figures."""
