"""Dataset tools: the zarr store, inspection (``python -m datasets.inspect``), HDF5 import/export (issue #5)."""
