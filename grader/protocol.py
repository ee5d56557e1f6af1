"""The examiner's channel: frames of JSON plus raw byte blobs, and values encoded by value only.

The examiner (which holds the tests) and the student's process talk over one socket. Everything
that crosses it is data: JSON-able values, and tensors or arrays as dtype, shape and raw bytes.
Never pickle, never code. An object that cannot travel (a model, a hook, a function) stays where
it lives and crosses as a handle, a number that only means something to the side that issued it.

A frame is a 4-byte big-endian length, that many bytes of UTF-8 JSON (an object whose "blobs" lists
the sizes of the byte blobs that follow), then the blobs. Every size is checked against `Bounds`
before anything is read, so a hostile peer can make a frame fail, never make the reader allocate
without limit or wait past its deadline.

Encoded values: None, bool, int, float, str as themselves; everything else is an object with a "$"
key: list, tuple, dict (keys str or int), size (a torch.Size), tensor, array, image, path, module (a
torch.nn module rebuilt from its class name, constructor arguments and state), ref (a handle).
Modules are decoded only where `decode` is told to (the student's side, for the examiner's models):
the examiner never builds one from what the student's process sends. Each blob backs one value at
most, so a small frame cannot decode into many copies of its largest blob.
"""
from __future__ import annotations

import dataclasses
import inspect
import json
import math
import os
import select
import struct
import time
from typing import Any, Callable

_LENGTH = struct.Struct("!I")
TENSOR_DTYPES = ("float16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8", "bool")
IMAGE_MODES = ("L", "RGB", "RGBA")


def ready_to_read(fds: list, timeout: float | None) -> list:
    """Those of `fds` (descriptors, or objects with fileno()) that can be read without blocking (data,
    end of stream or an error), waiting up to `timeout` seconds (None: no limit). poll, not select:
    a process with many files open has descriptors above 1023, which select refuses."""
    poller = select.poll()
    for fd in fds:
        poller.register(fd, select.POLLIN | select.POLLPRI)
    wait = None if timeout is None else max(0, math.ceil(min(timeout, 2 ** 31 / 1000 - 1) * 1000))
    ready = {fd for fd, _events in poller.poll(wait)}
    return [fd for fd in fds if (fd if isinstance(fd, int) else fd.fileno()) in ready]


class ProtocolError(Exception):
    """A frame or value broke the protocol: malformed, too large, out of order or of an unknown kind."""


class OverBudget(ProtocolError):
    """A frame's blobs total more than its bounds allow (refused before they are read)."""


@dataclasses.dataclass(frozen=True)
class Bounds:
    """What one frame may hold. The defaults fit this course's tensors many times over."""
    json_bytes: int = 4 << 20
    blob_bytes: int = 64 << 20
    blobs: int = 256
    depth: int = 32
    items: int = 100_000
    string_chars: int = 1 << 20


DEFAULT_BOUNDS = Bounds()


# ----------------------------------------------------------------------------- frames
def write_frame(fd: int, message: dict, blobs: list[bytes] = ()) -> None:
    """Write one frame: `message` (JSON) and the byte blobs it refers to by index."""
    body = json.dumps({**message, "blobs": [len(b) for b in blobs]}, allow_nan=True).encode()
    _write_all(fd, _LENGTH.pack(len(body)) + body)
    for blob in blobs:
        _write_all(fd, blob)


def _write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def read_frame(fd: int, deadline: float, bounds: Bounds = DEFAULT_BOUNDS) -> tuple[dict, list[bytes]] | None:
    """Read one frame; None at a clean end of stream. Raises TimeoutError, or ProtocolError."""
    header = _read_exactly(fd, _LENGTH.size, deadline, allow_eof=True)
    if header is None:
        return None
    (size,) = _LENGTH.unpack(header)
    if size > bounds.json_bytes:
        raise ProtocolError(f"a frame of {size:,} bytes is larger than the {bounds.json_bytes:,} allowed")
    try:
        message = json.loads(_read_exactly(fd, size, deadline))
    except (ValueError, RecursionError) as e:     # ValueError: also an int past Python's 4300 digits
        raise ProtocolError(f"a frame is not valid JSON ({type(e).__name__})") from None
    if not isinstance(message, dict):
        raise ProtocolError("a frame is not a JSON object")
    sizes = message.pop("blobs", [])
    if (not isinstance(sizes, list) or len(sizes) > bounds.blobs
            or not all(type(s) is int and s >= 0 for s in sizes)):
        raise ProtocolError("a frame's blob sizes are malformed or too many")
    if sum(sizes) > bounds.blob_bytes:
        raise OverBudget(f"a frame's blobs total {sum(sizes):,} bytes, over the {bounds.blob_bytes:,} allowed")
    return message, [_read_exactly(fd, s, deadline) for s in sizes]


def _read_exactly(fd: int, n: int, deadline: float, allow_eof: bool = False) -> bytes | None:
    chunks, got = [], 0
    while got < n:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("no frame before the deadline")
        if not ready_to_read([fd], min(left, 3600.0)):
            continue
        chunk = os.read(fd, min(n - got, 1 << 20))
        if not chunk:
            if got or not allow_eof:
                raise ProtocolError("the stream ended inside a frame")
            return None
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


# ----------------------------------------------------------------------------- encoding
def encode(value: Any, blobs: list[bytes], as_handle: Callable[[Any], int] | None = None,
           modules: bool = False, depth: int = 0) -> Any:
    """`value` as JSON-able data, appending raw bytes to `blobs`.

    What cannot travel goes through `as_handle` (which returns a handle number); without it, such a
    value raises TypeError naming its type. torch.nn modules travel by value only with `modules`
    (the examiner sending a model it built); otherwise they are objects like any other.
    """
    if depth > DEFAULT_BOUNDS.depth:
        raise TypeError("a value nested more than 32 deep cannot be sent")
    kind = type(value)
    if value is None or kind in (bool, str):
        return value
    if kind is int:
        return value if abs(value) < 2 ** 63 else {"$": "bigint", "text": str(value)}
    if kind is float:
        return value if math.isfinite(value) else {"$": "float", "text": repr(value)}
    if kind in (list, tuple):
        return {"$": kind.__name__, "items": [encode(v, blobs, as_handle, modules, depth + 1) for v in value]}
    if kind is dict and all(type(k) in (str, int) for k in value):
        return {"$": "dict", "items": [[k, encode(v, blobs, as_handle, modules, depth + 1)] for k, v in value.items()]}
    encoded = _encode_special(value, blobs, modules)
    if encoded is not None:
        return encoded
    if as_handle is None:
        raise TypeError(f"a {kind.__name__} cannot be sent by value")
    return ref(as_handle(value), value)


def ref(handle: int, value: Any) -> dict:
    """A handle to `value`, with its class's name and the names along its MRO (for type checks)."""
    return {"$": "ref", "id": handle, "type": type_name(value), "kinds": class_names(value)}


def type_name(value: Any) -> str:
    """The name of a value's class, as a bounded string (for messages only)."""
    return str(getattr(type(value), "__qualname__", "object"))[:200]


MAX_KINDS = 64


def class_names(value: Any) -> list[str]:
    """The names of the classes along `value`'s MRO, bounded (what `checks.is_a` asks of a handle)."""
    return [str(getattr(c, "__name__", "?"))[:100] for c in type(value).__mro__[:MAX_KINDS]]


def origins(value: Any) -> list[str]:
    """Where a handle's object was defined, as 'module:qualname': a function's own place, a class's MRO, an
    instance's class's MRO (a partial's function first). For the examiner's tripwire (`grader.reference`)."""
    import functools
    import types
    try:
        if isinstance(value, functools.partial):
            return origins(value.func)[:MAX_KINDS]
        if isinstance(value, types.MethodType):
            value = value.__func__
        places = [value] if callable(value) and not isinstance(value, type) and hasattr(value, "__qualname__") \
            else list((value if isinstance(value, type) else type(value)).__mro__)
        return [f"{str(getattr(p, '__module__', '?'))[:150]}:{str(getattr(p, '__qualname__', '?'))[:150]}"
                for p in places[:MAX_KINDS]]
    except Exception:               # the student's object may refuse to say: then it says nothing
        return []


def _encode_special(value: Any, blobs: list[bytes], modules: bool) -> dict | None:
    """Tensors, torch.Size, arrays, images, paths and torch.nn modules; None for anything else."""
    import sys
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(value, torch.Tensor):
        return _encode_tensor(torch, value, blobs)
    if torch is not None and type(value) is torch.Size:       # a tuple of ints: a shape is a value
        return {"$": "size", "items": [int(n) for n in value]}
    np = sys.modules.get("numpy")
    if np is not None and type(value) is np.ndarray and str(value.dtype) in TENSOR_DTYPES:
        blobs.append(np.ascontiguousarray(value).tobytes())
        return {"$": "array", "dtype": str(value.dtype), "shape": list(value.shape), "blob": len(blobs) - 1}
    image = sys.modules.get("PIL.Image")
    if image is not None and isinstance(value, image.Image) and value.mode in IMAGE_MODES:
        blobs.append(value.tobytes())
        return {"$": "image", "mode": value.mode, "size": list(value.size), "blob": len(blobs) - 1,
                "fastai": type(value).__name__ == "PILImage"}
    import pathlib
    if isinstance(value, pathlib.PurePath):
        return {"$": "path", "text": str(value)}
    if modules and torch is not None and isinstance(value, torch.nn.Module) and _is_plain_module(torch, value):
        return _encode_module(torch, value, blobs)
    return None


def _encode_tensor(torch, value, blobs: list[bytes]) -> dict:
    t = value.detach().to("cpu").contiguous()
    if t.dtype is torch.bfloat16:
        t = t.float()
    dtype = str(t.dtype).removeprefix("torch.")
    if dtype not in TENSOR_DTYPES:
        raise TypeError(f"a tensor of dtype {t.dtype} cannot be sent")
    blobs.append(t.numpy().tobytes() if t.numel() else b"")
    return {"$": "tensor", "dtype": dtype, "shape": list(t.shape), "blob": len(blobs) - 1,
            "requires_grad": bool(value.requires_grad)}


def _is_plain_module(torch, module) -> bool:
    """Built only from torch.nn's own classes, which the other side can rebuild by name."""
    return all(type(m) is getattr(torch.nn, type(m).__name__, None) for m in module.modules())


def _encode_module(torch, module, blobs: list[bytes]) -> dict:
    """A torch.nn module by value: class name, constructor arguments, children, state, train/eval."""
    cls = type(module)
    if cls is torch.nn.Sequential:
        args: dict = {}
    else:
        args = {}
        for name, p in inspect.signature(cls.__init__).parameters.items():
            if name in ("self", "device", "dtype") or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
                continue
            if name == "bias":
                args[name] = getattr(module, "bias", None) is not None
            elif hasattr(module, name):
                args[name] = encode(getattr(module, name), blobs)
    if cls is torch.nn.Sequential:                   # children carry their own state
        children, state = [[n, _encode_module(torch, c, blobs)] for n, c in module.named_children()], {}
    else:
        children, state = [], {k: _encode_tensor(torch, v, blobs) for k, v in module.state_dict().items()}
    return {"$": "module", "class": cls.__name__, "args": args, "training": module.training,
            "children": children, "state": state}


# ----------------------------------------------------------------------------- decoding
MAX_DIMENSION = 1 << 40             # a shape's dimensions, zeros aside, multiply to no more than this


@dataclasses.dataclass
class _Decoding:
    """One call of `decode`: what it may hold, and what it has used so far."""
    blobs: list[bytes]
    from_handle: Callable[[int, str, tuple[str, ...]], Any] | None
    bounds: Bounds
    modules: bool
    items: int = 0
    used: set = dataclasses.field(default_factory=set)

    def enter(self, depth: int) -> None:
        self.items += 1
        if depth > self.bounds.depth or self.items > self.bounds.items:
            raise ProtocolError("a value is nested too deep or has too many items")


def decode(data: Any, blobs: list[bytes], from_handle: Callable[[int, str, tuple[str, ...]], Any] | None = None,
           bounds: Bounds = DEFAULT_BOUNDS, modules: bool = False) -> Any:
    """The value `encode` described, checked strictly: an unknown kind or bad size is a ProtocolError.

    torch.nn modules are rebuilt only with `modules` (the student's side, receiving the examiner's
    models); otherwise a module is a ProtocolError like any unknown kind."""
    return _decode(data, _Decoding(blobs, from_handle, bounds, modules), 0)


def _decode(data, state: _Decoding, depth: int) -> Any:
    state.enter(depth)
    if data is None or type(data) in (bool, int, float):
        return data
    if type(data) is str:
        return _bounded_str(data, state.bounds)
    if type(data) is not dict or type(data.get("$")) is not str:
        raise ProtocolError(f"a value of an unknown form ({type(data).__name__})")
    kind = data["$"]
    sub = lambda v: _decode(v, state, depth + 1)  # noqa: E731
    if kind in ("list", "tuple"):
        items = _field(data, "items", list)
        return (list if kind == "list" else tuple)(sub(v) for v in items)
    if kind == "dict":
        pairs = _field(data, "items", list)
        if not all(type(p) is list and len(p) == 2 and type(p[0]) in (str, int) for p in pairs):
            raise ProtocolError("a dict's items are malformed")
        return {(_bounded_str(k, state.bounds) if type(k) is str else k): sub(v) for k, v in pairs}
    if kind == "bigint":
        text = _field(data, "text", str)
        if len(text) > 400:
            raise ProtocolError("an integer is too long")
        try:
            return int(text)
        except ValueError:
            raise ProtocolError("an integer is malformed") from None
    if kind == "float":
        text = _field(data, "text", str)
        if text not in ("nan", "inf", "-inf"):
            raise ProtocolError("a float is malformed")
        return float(text)
    if kind == "size":
        items = [sub(v) for v in _field(data, "items", list)]
        if not all(type(n) is int and -2 ** 63 <= n < 2 ** 63 for n in items):
            raise ProtocolError("a torch.Size holds something other than 64-bit integers")
        import torch
        return torch.Size(items)
    if kind == "tensor":
        return _decode_tensor(data, state)
    if kind == "array":
        return _decode_array(data, state)
    if kind == "image":
        return _decode_image(data, state)
    if kind == "path":
        import pathlib
        return pathlib.Path(_bounded_str(_field(data, "text", str), state.bounds))
    if kind == "module" and state.modules:
        return _decode_module(data, state, depth)
    if kind == "ref":
        if state.from_handle is None:
            raise ProtocolError("a handle where only values are allowed")
        handle, type_name = _field(data, "id", int), data.get("type", "object")
        return state.from_handle(handle, type_name[:200] if type(type_name) is str else "object", _kinds(data))
    raise ProtocolError(f"a value of an unknown kind {kind[:40]!r}")


def _kinds(data: dict) -> tuple[str, ...]:
    """A handle's class names, or a ProtocolError if they are not a short list of short strings."""
    kinds = data.get("kinds", [])
    if type(kinds) is not list or len(kinds) > MAX_KINDS or any(type(k) is not str or len(k) > 100 for k in kinds):
        raise ProtocolError("a handle's class names are not a short list of names")
    return tuple(kinds)


def _bounded_str(text: str, bounds: Bounds) -> str:
    if len(text) > bounds.string_chars:
        raise ProtocolError("a string is longer than allowed")
    return text


def _field(data: dict, name: str, kind: type) -> Any:
    value = data.get(name)
    if type(value) is not kind:
        raise ProtocolError(f"a value's {name!r} is missing or not a {kind.__name__}")
    return value


def _blob(data: dict, state: _Decoding) -> bytes:
    """The blob a value names, which no other value of this decode has used."""
    index = _field(data, "blob", int)
    if not 0 <= index < len(state.blobs) or index in state.used:
        raise ProtocolError("a value names a blob that is missing or already used")
    state.used.add(index)
    return state.blobs[index]


def _blob_for(data: dict, state: _Decoding, dtype_size: int) -> tuple[bytes, list[int]]:
    shape = _field(data, "shape", list)
    if (len(shape) > 16 or not all(type(n) is int and n >= 0 for n in shape)
            or math.prod(max(n, 1) for n in shape) > MAX_DIMENSION):
        raise ProtocolError("a tensor's shape is malformed")
    blob = _blob(data, state)
    if math.prod(shape) * dtype_size != len(blob):
        raise ProtocolError("a tensor's bytes do not match its shape and dtype")
    return blob, shape


def _decode_tensor(data: dict, state: _Decoding):
    import torch
    dtype = _field(data, "dtype", str)
    if dtype not in TENSOR_DTYPES:
        raise ProtocolError(f"a tensor of dtype {dtype[:20]!r} is not allowed")
    torch_dtype = getattr(torch, dtype)
    blob, shape = _blob_for(data, state, torch.empty((), dtype=torch_dtype).element_size())
    if dtype == "bool":                 # any byte but 0 is True: a bool holds 0 or 1, nothing else
        t = torch.frombuffer(bytearray(blob), dtype=torch.uint8) != 0 if blob else torch.empty(0, dtype=torch.bool)
    else:
        t = torch.frombuffer(bytearray(blob), dtype=torch_dtype) if blob else torch.empty(0, dtype=torch_dtype)
    t = t.reshape(shape)
    if data.get("requires_grad") is True and t.is_floating_point():
        t.requires_grad_(True)
    return t


def _decode_array(data: dict, state: _Decoding):
    import numpy as np
    dtype = _field(data, "dtype", str)
    if dtype not in TENSOR_DTYPES:
        raise ProtocolError(f"an array of dtype {dtype[:20]!r} is not allowed")
    blob, shape = _blob_for(data, state, np.dtype(dtype).itemsize)
    if dtype == "bool":
        return (np.frombuffer(blob, dtype=np.uint8) != 0).reshape(shape)
    return np.frombuffer(blob, dtype=dtype).reshape(shape).copy()


def _decode_image(data: dict, state: _Decoding):
    from PIL import Image
    mode, size = _field(data, "mode", str), _field(data, "size", list)
    if mode not in IMAGE_MODES or len(size) != 2 or not all(type(n) is int and 0 < n <= 8192 for n in size):
        raise ProtocolError("an image's mode or size is not allowed")
    blob = _blob(data, state)
    if len(blob) != size[0] * size[1] * len(mode):
        raise ProtocolError("an image's bytes do not match its size")
    image = Image.frombytes(mode, tuple(size), blob)
    if data.get("fastai") is True:
        from fastai.vision.core import PILImage
        image = PILImage(image)
    return image


def _decode_module(data: dict, state: _Decoding, depth: int):
    """Rebuild a torch.nn module from its class name (torch.nn's own only), arguments and state."""
    import torch
    name = _field(data, "class", str)
    cls = getattr(torch.nn, name, None)
    if not (isinstance(cls, type) and issubclass(cls, torch.nn.Module)) or name.startswith("_"):
        raise ProtocolError(f"{name[:40]!r} is not a torch.nn module")
    if cls is torch.nn.Sequential:
        children = _field(data, "children", list)
        if not all(type(c) is list and len(c) == 2 and type(c[0]) is str for c in children):
            raise ProtocolError("a Sequential's children are malformed")
        module = torch.nn.Sequential()
        for child_name, child in children:
            state.enter(depth + 1)
            child = _ensure_dict(child)
            if child.get("$") != "module":
                raise ProtocolError("a Sequential's child is not a module")
            try:
                module.add_module(child_name, _decode_module(child, state, depth + 1))
            except (KeyError, TypeError) as e:      # a name torch refuses ("", with a dot, taken)
                raise ProtocolError(f"a Sequential's child has a bad name ({type(e).__name__})") from None
        module.training = bool(data.get("training"))   # not recursive: each child said its own
        return module
    args = {k: _decode(v, state, depth + 1) for k, v in _field(data, "args", dict).items()}
    try:
        module = cls(**args)
    except Exception as e:
        raise ProtocolError(f"{name} could not be built from its arguments ({type(e).__name__})") from None
    tensors = {}
    for k, v in _field(data, "state", dict).items():
        state.enter(depth + 1)
        if _ensure_dict(v).get("$") != "tensor":
            raise ProtocolError("a module's state holds something other than a tensor")
        tensors[k] = _decode_tensor(v, state)
    try:
        module.load_state_dict(tensors, strict=True)
    except Exception as e:
        raise ProtocolError(f"{name}'s state does not fit it ({type(e).__name__})") from None
    return module.train(bool(data.get("training")))


def _ensure_dict(value: Any) -> dict:
    if type(value) is not dict:
        raise ProtocolError("a module part is malformed")
    return value
