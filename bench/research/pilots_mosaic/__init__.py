"""The mosaic pilots of docs/pilots-mosaic.md (each script names its table there)."""
