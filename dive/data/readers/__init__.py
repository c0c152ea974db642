"""Built-in dataset readers; importing this package registers all of them."""

from dive.data.readers import cuhk03_np, llcm, market1501, regdb, synthvi, sysu_mm01  # noqa: F401
