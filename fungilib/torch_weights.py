"""Read a PyTorch state dict (``.pth``) with numpy alone: a restricted unpickler that only rebuilds tensors and never
runs code. Both of torch's serializations are read: the legacy one (torch < 1.6: magic number, protocol, system
information, the object pickle, the storage keys, then each storage's element count and raw bytes) and the zip one
(``*/data.pkl`` beside ``*/data/<key>``)."""

from __future__ import annotations

import collections
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from fungilib.errors import FungilibError

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001
STORAGE_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16, "LongStorage": np.int64,
    "IntStorage": np.int32, "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


@dataclass
class _Storage:
    key: str
    dtype: Any
    numel: int
    data: np.ndarray | None = None


@dataclass
class _TensorRef:
    storage: _Storage
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]

    def array(self) -> np.ndarray:
        data = self.storage.data
        if data is None:
            raise ValueError(f"storage {self.storage.key} was never read")
        if not self.size:
            return np.array(data[self.offset])
        item = data.itemsize
        view = np.lib.stride_tricks.as_strided(data[self.offset:], shape=self.size,
                                               strides=[s * item for s in self.stride], writeable=False)
        return np.array(view)


def _rebuild_tensor_v2(storage: _Storage, offset: int, size: Any, stride: Any, *_: Any) -> _TensorRef:
    return _TensorRef(storage, int(offset), tuple(size), tuple(stride))


def _rebuild_tensor(storage: _Storage, offset: int, size: Any, stride: Any) -> _TensorRef:
    return _TensorRef(storage, int(offset), tuple(size), tuple(stride))


def _rebuild_parameter(data: _TensorRef, *_: Any) -> _TensorRef:
    return data


class _StorageType:
    def __init__(self, name: str) -> None:
        self.name, self.dtype = name, STORAGE_DTYPES[name]


ALLOWED = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("collections", "OrderedDict"): collections.OrderedDict,
    **{("torch", name): _StorageType(name) for name in STORAGE_DTYPES},
}


class RefusedPickle(Exception):
    """The pickle asks for something other than tensors (code to run, a whole model object)."""


class _TensorsOnly(pickle.Unpickler):
    def __init__(self, handle: IO[bytes], storages: dict[str, _Storage]) -> None:
        super().__init__(handle)
        self.storages = storages

    def find_class(self, module: str, name: str) -> Any:
        try:
            return ALLOWED[(module, name)]
        except KeyError:
            raise RefusedPickle(f"{module}.{name}") from None

    def persistent_load(self, pid: Any) -> _Storage:
        if not isinstance(pid, tuple) or not pid or pid[0] != "storage" or not isinstance(pid[1], _StorageType):
            raise RefusedPickle(f"persistent id {str(pid)[:60]}")
        storage_type, key = pid[1], str(pid[2])
        numel = int(pid[4]) if len(pid) > 4 else 0
        return self.storages.setdefault(key, _Storage(key, storage_type.dtype, numel))


def _legacy(handle: IO[bytes]) -> tuple[Any, dict[str, _Storage]]:
    storages: dict[str, _Storage] = {}
    if _TensorsOnly(handle, storages).load() != LEGACY_MAGIC:
        raise ValueError("not a PyTorch checkpoint (no legacy magic number, not a zip file)")
    if _TensorsOnly(handle, storages).load() != LEGACY_PROTOCOL:
        raise ValueError("unsupported legacy protocol version")
    _TensorsOnly(handle, storages).load()  # system information (byte order, type sizes)
    result = _TensorsOnly(handle, storages).load()
    keys = _TensorsOnly(handle, storages).load()
    for key in keys:
        storage = storages[str(key)]
        head = handle.read(8)
        if len(head) < 8:
            raise ValueError(f"truncated: storage {key} has no element count")
        count = int(np.frombuffer(head, "<i8")[0])
        size = count * np.dtype(storage.dtype).itemsize
        raw = handle.read(size)
        if len(raw) < size:
            raise ValueError(f"truncated: storage {key} needs {size} bytes, {len(raw)} are left")
        storage.data = np.frombuffer(raw, dtype=np.dtype(storage.dtype).newbyteorder("<"))
    return result, storages


def _zip(path: Path) -> tuple[Any, dict[str, _Storage]]:
    storages: dict[str, _Storage] = {}
    with zipfile.ZipFile(path) as archive:
        pickles = [n for n in archive.namelist() if n.endswith("/data.pkl")]
        if len(pickles) != 1:
            raise ValueError("a zip file without exactly one */data.pkl: not a PyTorch checkpoint")
        prefix = pickles[0][: -len("data.pkl")]
        with archive.open(pickles[0]) as handle:
            result = _TensorsOnly(handle, storages).load()
        for key, storage in storages.items():
            raw = archive.read(f"{prefix}data/{key}")
            storage.data = np.frombuffer(raw, dtype=np.dtype(storage.dtype).newbyteorder("<"))
    return result, storages


def read_state_dict(path: Path) -> dict[str, np.ndarray]:
    """Every tensor of a ``.pth`` state dict, by name, as numpy arrays (``num_batches_tracked`` included).

    Nothing in the file is executed: a pickle that asks for anything but tensors, a truncated file or one that
    is not a checkpoint is one line naming the file and what is wrong."""
    path = Path(path)
    try:
        if zipfile.is_zipfile(path):
            result, _ = _zip(path)
        else:
            with open(path, "rb") as handle:
                result, _ = _legacy(handle)
        if not isinstance(result, dict) or not all(isinstance(v, _TensorRef) for v in result.values()):
            raise ValueError("it holds no state dict of tensors (a whole model object, or something else)")
        return {str(name): ref.array() for name, ref in result.items()}
    except RefusedPickle as exc:
        raise FungilibError(f"{path}: refused: the file asks for {exc}, which is not a tensor; fungilib only "
                            "rebuilds tensors from a checkpoint and ran nothing") from None
    except FileNotFoundError:
        raise FungilibError(f"{path}: no such weights file") from None
    except (ValueError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, KeyError, IndexError, TypeError,
            AttributeError, OverflowError, MemoryError) as exc:
        reason = str(exc) or type(exc).__name__
        if isinstance(exc, EOFError | pickle.UnpicklingError):
            reason = f"truncated or damaged ({type(exc).__name__}: {reason})"
        raise FungilibError(f"{path}: not a readable PyTorch state dict: {reason}") from None
