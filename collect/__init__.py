"""Stage ``collect``: retry-until-success demonstrations into zarr."""
