"""Reading and writing datasets (the Zarr v3 data contract lives in :mod:`pipeline.io.zarr_store`)."""
