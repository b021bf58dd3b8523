"""Megatron `.bin/.idx` writing without torch, plus the token-count manifests that `blend` reads.

The `.idx` layout is megatron-core's `_IndexWriter` (indexed_dataset.py): header `MMIDIDX\\x00\\x00`, version u64 = 1,
dtype code u8, sequence count u64, document count u64, int32 lengths, int64 byte pointers, int64 document indices.
We write it with numpy in one go instead of importing torch + megatron (3-5 s of start-up) and looping in Python."""
from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import numpy as np

INDEX_HEADER = b"MMIDIDX\x00\x00"
DTYPE_CODES = {np.dtype(np.uint8): 1, np.dtype(np.int8): 2, np.dtype(np.int16): 3, np.dtype(np.int32): 4,
               np.dtype(np.int64): 5, np.dtype(np.float64): 6, np.dtype(np.float32): 7, np.dtype(np.uint16): 8}
MANIFEST_SUFFIX = ".manifest.json"


def optimal_dtype(vocab_size: int) -> np.dtype:
    """Same rule as megatron-core `DType.optimal_dtype`: uint16 below 65,500 ids, else int32."""
    return np.dtype(np.uint16) if vocab_size < 65500 else np.dtype(np.int32)


def write_index(idx_path: str | Path, lengths: np.ndarray, dtype: np.dtype) -> None:
    """Write a megatron-core `.idx` for one-sequence-per-document data, atomically (tmp + rename)."""
    lengths = np.asarray(lengths, dtype=np.int32)
    n = len(lengths)
    pointers = np.zeros(n, dtype=np.int64)
    if n > 1:
        np.cumsum(lengths[:-1], dtype=np.int64, out=pointers[1:])
    pointers *= np.dtype(dtype).itemsize
    tmp = Path(str(idx_path) + ".tmp")
    with open(tmp, "wb") as f:
        f.write(INDEX_HEADER)
        f.write(struct.pack("<Q", 1))
        f.write(struct.pack("<B", DTYPE_CODES[np.dtype(dtype)]))
        f.write(struct.pack("<Q", n))
        f.write(struct.pack("<Q", n + 1))
        f.write(lengths.tobytes())
        f.write(pointers.tobytes())
        f.write(np.arange(n + 1, dtype=np.int64).tobytes())
    os.replace(tmp, idx_path)


CODE_DTYPES = {v: k for k, v in DTYPE_CODES.items()}


def read_index(idx_path: str | Path) -> tuple[np.dtype, np.ndarray, np.ndarray]:
    """(token dtype, sequence lengths, byte pointers) of a megatron-core `.idx`; a file that is not one, or is
    cut short, is a ValueError saying which."""
    raw = Path(idx_path).read_bytes()
    head = len(INDEX_HEADER) + 8 + 1 + 8 + 8
    if len(raw) < head or not raw.startswith(INDEX_HEADER):
        raise ValueError(f"{idx_path}: not a megatron-core index (no {INDEX_HEADER!r} header)")
    o = len(INDEX_HEADER)
    version, code = struct.unpack_from("<Q", raw, o)[0], raw[o + 8]
    n_seq, n_doc = struct.unpack_from("<QQ", raw, o + 9)
    if version != 1 or code not in CODE_DTYPES:
        raise ValueError(f"{idx_path}: unsupported index (version {version}, dtype code {code})")
    if len(raw) < head + n_seq * 12 + n_doc * 8:
        raise ValueError(f"{idx_path}: truncated ({len(raw)} bytes for {n_seq} sequences)")
    lengths = np.frombuffer(raw, np.int32, n_seq, head)
    pointers = np.frombuffer(raw, np.int64, n_seq, head + 4 * n_seq)
    return CODE_DTYPES[code], lengths, pointers


def manifest_path(prefix: str | Path) -> Path:
    return Path(str(prefix) + MANIFEST_SUFFIX)


def load_manifest(path: str | Path) -> dict:
    """Read a tokenize manifest (by its path or by its dataset prefix); `prefix` is made absolute."""
    p = Path(path)
    if not p.name.endswith(MANIFEST_SUFFIX):
        p = manifest_path(p)
    if not p.is_file():
        raise FileNotFoundError(f"no tokenize manifest at {p} (run `carebot data tokenize` first)")
    m = json.loads(p.read_text())
    if not m.get("complete"):
        raise ValueError(f"{p}: tokenize run is not complete; rerun `carebot data tokenize` to finish it")
    m["prefix"] = str(p.with_name(p.name[: -len(MANIFEST_SUFFIX)]).resolve())
    return m
