"""Pure array operations (NumPy or CuPy, taken from the data).

Ops know nothing of configuration, Dask, Zarr or the command line: image
first, options keyword-only, an ``out=`` where in-place work helps.
"""
