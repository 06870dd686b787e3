"""The data layer: prepare byte datasets (text, images, audio) and read training windows.

Prepare once, then read::

    from sparse_transformer.data import prepare, ByteDataset
    d = prepare("shakespeare", "data")          # data/shakespeare/{train,val,test}.bin, meta.json
    ds = ByteDataset(d, "train")
    x, y = ds.get_batch(16, 256, torch.Generator().manual_seed(0))

See :mod:`.store` for the on-disk format and the window conventions (image records get a start
byte 0, ``ctx`` must equal the record size), and the ``text``, ``images`` and ``audio`` modules
for each dataset's source and split.
"""

from .audio import mu_law_decode, mu_law_encode, read_wav, resample
from .images import read_idx
from .pickle_safe import RestrictedUnpickler, UnsafePickleError, safe_load
from .registry import PREPARERS, prepare, preparer_options
from .sources import FetchError
from .store import IMAGE_START_BYTE, SPLITS, ByteDataset, load_meta
from .writers import image_grid, write_png_grid, write_wav

__all__ = [
    "IMAGE_START_BYTE",
    "PREPARERS",
    "SPLITS",
    "ByteDataset",
    "FetchError",
    "RestrictedUnpickler",
    "UnsafePickleError",
    "image_grid",
    "load_meta",
    "mu_law_decode",
    "mu_law_encode",
    "prepare",
    "preparer_options",
    "read_idx",
    "read_wav",
    "resample",
    "safe_load",
    "write_png_grid",
    "write_wav",
]
