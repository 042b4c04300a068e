"""safetensors files whose bytes depend only on their tensors and metadata.

``safetensors.torch.save`` writes the ``__metadata__`` object of its JSON header in the order of a
hash map, which changes from call to call: equal weights gave files of different bytes, so an
adaptation repeated with the same seed published a "new" weights file (another content-addressed
name, the exports of the old one dropped). The header is written again here with its keys sorted;
the tensor data (whose offsets are relative to the end of the header) is not touched.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping

import torch
from safetensors.torch import save

_LENGTH = struct.Struct("<Q")  # the header's length, little-endian, before it
_ALIGN = 8  # the data starts at a multiple of 8 bytes, as safetensors pads it


def safetensors_bytes(tensors: Mapping[str, torch.Tensor], *, metadata: Mapping[str, str] | None = None) -> bytes:
    """The safetensors file of ``tensors`` (contiguous) and string ``metadata``, its header's keys sorted."""
    data = save(dict(tensors), metadata=None if metadata is None else dict(metadata))
    (length,) = _LENGTH.unpack_from(data)
    header = json.loads(data[_LENGTH.size:_LENGTH.size + length])
    text = json.dumps(header, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    text += b" " * (-len(text) % _ALIGN)
    return _LENGTH.pack(len(text)) + text + data[_LENGTH.size + length:]
