"""grader.protocol, the by-value wire between the examiner and the student's process, and the
examiner's Channel over it. The student's process is hostile: it can write any bytes on the channel.

Covered: every kind of value round trips through real frames (torch.nn models by value, with their
state); frames arrive in short reads, end early or late; every size is refused before it is read or
allocated; malformed and hostile values are ProtocolErrors, never an import, a call or a pickle; and
the examiner's Channel, against a fake student end on a socketpair, breaks on answers out of turn
or too large, and turns the student's exceptions into failures only (no exception the student names
can make a test pass, stop the examiner or pass for a timeout).
"""
from __future__ import annotations

import builtins
import importlib
import json
import math
import os
import pathlib
import pickle
import socket
import struct
import sys
import threading
import time
import tracemalloc
import types

import fastai.vision.core  # noqa: F401  (imported before pickle is refused: only decode is watched)
import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from course_utils.checks import check_bool, check_tensor
from grader import examiner, protocol, student_side
from course_utils.checks import is_a
from grader.examiner import Channel, ChannelBroken, Remote, Student, StudentError
from grader.protocol import ProtocolError

LIMITS = protocol.DEFAULT_BOUNDS


# ----------------------------------------------------------------------------- helpers
@pytest.fixture(autouse=True)
def no_pickle(monkeypatch):
    """Every test runs with pickle, torch.load and numpy.load refusing (and remembering) any use."""
    used = []

    def refuse(name):
        def refused(*args, **kwargs):
            used.append(name)
            raise AssertionError(f"{name} was called")
        return refused
    for owner, name in ((pickle, "loads"), (pickle, "load"), (pickle, "Unpickler"), (pickle, "_loads"),
                        (pickle, "_load"), (pickle, "_Unpickler"), (torch, "load"), (np, "load")):
        monkeypatch.setattr(owner, name, refuse(f"{owner.__name__}.{name}"))
    yield
    assert not used, f"unpickling was attempted: {used}"


def start(target, *args) -> threading.Thread:
    thread = threading.Thread(target=target, args=args, daemon=True)
    thread.start()
    return thread


COUNTED = object()


def frame_bytes(message: dict | bytes, *blobs: bytes, sizes=COUNTED) -> bytes:
    """The bytes of one frame; `sizes` overrides the blob sizes the frame declares."""
    if not isinstance(message, bytes):
        message = json.dumps({**message, "blobs": [len(b) for b in blobs] if sizes is COUNTED else sizes}).encode()
    return struct.pack("!I", len(message)) + message + b"".join(blobs)


def read(data: bytes, seconds: float = 10, close: bool = True, pieces: int = 0):
    """read_frame on the far end of a socketpair after `data` was written (then closed, with `close`);
    with `pieces`, written a few bytes at a time."""
    ours, theirs = socket.socketpair()
    with ours, theirs:
        def write():
            try:
                for i in range(0, len(data), pieces or len(data) or 1):
                    ours.sendall(data[i:i + (pieces or len(data))])
                    if pieces and i % (pieces * 50) == 0:
                        time.sleep(0.001)
                if close:
                    ours.shutdown(socket.SHUT_WR)
            except OSError:                 # the reader refused the frame and went away
                pass
        writer = start(write)
        try:
            return protocol.read_frame(theirs.fileno(), time.monotonic() + seconds)
        finally:
            theirs.shutdown(socket.SHUT_RDWR)       # a writer still blocked on a full buffer gets EPIPE
            writer.join(5)


def roundtrip(value, modules: bool = False, as_handle=None, from_handle=None):
    """`value` encoded, sent as a real frame, read back and decoded."""
    blobs: list[bytes] = []
    encoded = protocol.encode(value, blobs, as_handle, modules)
    ours, theirs = socket.socketpair()
    with ours, theirs:
        writer = start(protocol.write_frame, ours.fileno(), {"value": encoded}, blobs)
        message, got = protocol.read_frame(theirs.fileno(), time.monotonic() + 30)
        writer.join(5)
    assert json.loads(json.dumps(message)) == message      # the frame itself is plain JSON
    return protocol.decode(message["value"], got, from_handle, modules=modules)


def same_tensor(a, b) -> bool:
    return (type(b) is torch.Tensor and a.dtype == b.dtype and a.shape == b.shape
            and torch.equal(a.detach(), b.detach()))


def tensor_value(dtype: str, shape: list, blob: int = 0, **more) -> dict:
    return {"$": "tensor", "dtype": dtype, "shape": shape, "blob": blob, **more}


# ----------------------------------------------------------------------------- round trips
@pytest.mark.parametrize("value", [
    None, True, False, 0, -7, 2 ** 63 - 1, -2 ** 63, 2 ** 63, -2 ** 63 - 1, 10 ** 300, -(10 ** 398),
    0.0, -0.0, 1.5, -1e-300, 1e308, float("inf"), float("-inf"),
    "", "héllo ✓ \x00 \ud800", "x" * 100_000,
    [], (), {}, [1, "a", None], (1, (2, (3,))), {"a": 1, 2: "b", "c": [1.5, {"d": ()}]},
], ids=lambda v: repr(v)[:24])
def test_plain_values_round_trip(value):
    got = roundtrip(value)
    assert got == value and type(got) is type(value)
    assert repr(got) == repr(value)                       # -0.0, tuple inside list, int keys...


def test_nan_round_trips_and_structure_types_are_kept():
    got = roundtrip([float("nan"), (1, [2]), {1: (3,), "1": [4]}])
    assert math.isnan(got[0])
    assert got[1:] == [(1, [2]), {1: (3,), "1": [4]}] and type(got[1]) is tuple and type(got[1][1]) is list


@pytest.mark.parametrize("dtype", protocol.TENSOR_DTYPES)
def test_tensors_of_every_allowed_dtype_round_trip(dtype):
    torch_dtype = getattr(torch, dtype)
    base = (torch.arange(-12, 12).reshape(2, 3, 4) * 37).to(torch_dtype)
    if dtype == "bool":
        base = torch.arange(24).reshape(2, 3, 4) % 3 == 0
    for t in (base, base.transpose(0, 2), base[:, ::2, 1:], base[0, 0, 0], base[:0], torch.empty(0, 5, dtype=torch_dtype)):
        got = roundtrip(t)
        assert same_tensor(t, got), (dtype, t.shape)
        assert got.is_contiguous() and not got.requires_grad


def test_tensor_flags_and_look_alikes():
    x = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    got = roundtrip(x)
    assert same_tensor(x, got) and got.requires_grad and got.is_leaf and got.grad_fn is None
    got = roundtrip(x * 2)                                  # a non-leaf: sent detached, the flag kept
    assert got.requires_grad and got.is_leaf
    assert same_tensor(torch.ones(2), roundtrip(nn.Parameter(torch.ones(2))))   # a plain tensor again
    half = torch.tensor([1.5, -2.25], dtype=torch.bfloat16)
    assert same_tensor(half.float(), roundtrip(half))
    with pytest.raises(TypeError, match="complex64"):
        protocol.encode(torch.ones(2, dtype=torch.complex64), [])
    # the decoded tensor owns its memory: changing it does not change the frame's bytes
    blobs = [struct.pack("<4f", 1, 2, 3, 4)]
    t = protocol.decode(tensor_value("float32", [4]), blobs)
    t += 1
    assert blobs[0] == struct.pack("<4f", 1, 2, 3, 4)


@pytest.mark.parametrize("dtype", protocol.TENSOR_DTYPES)
def test_numpy_arrays_round_trip(dtype):
    a = (np.arange(-6, 6).reshape(3, 4) * 11).astype(dtype)
    for value in (a, a.T, np.asfortranarray(a), a[::2, ::3], np.array(a[0, 0]), a[:0]):
        got = roundtrip(value)
        assert type(got) is np.ndarray and got.dtype == value.dtype and got.shape == value.shape
        assert np.array_equal(got, value) and got.flags.writeable and got.flags.c_contiguous


def test_arrays_that_cannot_travel_by_value():
    for value in (np.arange(3, dtype=">f4"), np.array(["a"]), np.array([None]), np.zeros(2, dtype=np.complex64)):
        with pytest.raises(TypeError):
            protocol.encode(value, [])
        assert protocol.encode(value, [], lambda v: 7) == {"$": "ref", "id": 7, "type": "ndarray", "kinds": ["ndarray", "object"]}


@pytest.mark.parametrize("mode", protocol.IMAGE_MODES)
def test_images_round_trip(mode):
    rng = np.random.default_rng(0)
    image = Image.frombytes(mode, (7, 5), rng.integers(0, 256, 5 * 7 * len(mode), dtype=np.uint8).tobytes())
    got = roundtrip(image)
    assert got.mode == mode and got.size == (7, 5) and got.tobytes() == image.tobytes()
    assert type(got).__name__ != "PILImage"
    fast = roundtrip(fastai.vision.core.PILImage(image))
    assert type(fast) is fastai.vision.core.PILImage and fast.tobytes() == image.tobytes()


def test_paths_and_handles_round_trip():
    got = roundtrip(pathlib.PurePosixPath("/data/pets/a b.jpg"))
    assert got == pathlib.Path("/data/pets/a b.jpg") and isinstance(got, pathlib.Path)
    objects, handed = {}, []

    def as_handle(value):
        objects[len(objects) + 1] = value
        return len(objects)
    things = [len, object(), Image.new("P", (2, 2))]
    got = roundtrip({"things": things}, as_handle=as_handle, from_handle=lambda h, t, k: handed.append((h, t, k)) or h)
    assert got == {"things": [1, 2, 3]} and handed == [(1, "builtin_function_or_method", ("builtin_function_or_method", "object")),
                                                       (2, "object", ("object",)), (3, "Image", ("Image", "object"))]
    assert [objects[h] for h in got["things"]] == things
    with pytest.raises(TypeError, match="function"):
        protocol.encode(lambda: 0, [])
    with pytest.raises(ProtocolError, match="handle"):          # no from_handle: values only
        roundtrip([object()], as_handle=lambda v: 1)


def _model() -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU(),
        nn.Sequential(nn.Conv2d(4, 6, (3, 2), stride=2, padding_mode="reflect", padding=1), nn.LeakyReLU(0.2)),
        nn.MaxPool2d(2), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Dropout(0.25),
        nn.Linear(24, 5), nn.LayerNorm(5, eps=1e-3), nn.Linear(5, 2, bias=False))
    with torch.no_grad():
        net.train()(torch.randn(8, 3, 16, 16))                  # running statistics that are not the defaults
    net.eval()
    net[1].train()                                              # training flags differ between children
    return net


def test_torch_models_travel_by_value_with_their_state():
    net = _model()
    got = roundtrip(net, modules=True)
    assert got is not net
    assert [type(m) for m in got.modules()] == [type(m) for m in net.modules()]
    assert [m.training for m in got.modules()] == [m.training for m in net.modules()]
    assert got[3][0].padding_mode == "reflect" and got[0].bias is None and got[9].eps == 1e-3
    mine, theirs = net.state_dict(), got.state_dict()
    assert mine.keys() == theirs.keys() and all(same_tensor(mine[k], theirs[k]) for k in mine)
    assert int(theirs["1.num_batches_tracked"]) == 1
    x = torch.randn(4, 3, 16, 16)
    net.eval(), got.eval()
    with torch.no_grad():
        assert torch.equal(net(x), got(x))
    assert all(p.requires_grad for p in got.parameters())


def test_models_that_are_not_plain_torch_nn_do_not_travel_by_value():
    class Net(nn.Linear):
        pass
    for model in (Net(2, 2), nn.Sequential(nn.ReLU(), Net(2, 2)), nn.Linear(2, 2)):
        blobs: list[bytes] = []
        if type(model) is nn.Linear:
            assert protocol.encode(model, blobs, lambda v: 5) == \
                {"$": "ref", "id": 5, "type": "Linear", "kinds": ["Linear", "Module", "object"]}  # no `modules`
            continue
        with pytest.raises(TypeError):
            protocol.encode(model, blobs, modules=True)
        assert protocol.encode(model, blobs, lambda v: 9, modules=True)["$"] == "ref"


def test_nesting_limits_agree_on_both_sides():
    value: list = []
    for _ in range(LIMITS.depth):
        value = [value]
    assert roundtrip(value) == value
    with pytest.raises(TypeError, match="nested"):
        protocol.encode([value], [])
    deep, expected = None, None
    for _ in range(LIMITS.depth):
        deep, expected = {"$": "list", "items": [deep]}, [expected]
    assert protocol.decode(deep, []) == expected
    with pytest.raises(ProtocolError, match="deep"):
        protocol.decode({"$": "list", "items": [deep]}, [])


# ----------------------------------------------------------------------------- framing
def test_frames_arrive_whole_through_many_short_reads(monkeypatch):
    blob = np.random.default_rng(1).integers(0, 256, 20_000, dtype=np.uint8).tobytes()
    data = frame_bytes({"seq": 3, "text": "é" * 500}, blob, b"", b"xyz") * 2
    real_read = os.read
    reads = []

    def short_read(fd, n):
        reads.append(n)
        return real_read(fd, min(n, 7))
    monkeypatch.setattr(os, "read", short_read)
    message, blobs = read(data, pieces=13)
    assert message == {"seq": 3, "text": "é" * 500} and blobs == [blob, b"", b"xyz"]
    assert len(reads) > 2000


def test_two_frames_in_one_write_are_read_one_at_a_time():
    ours, theirs = socket.socketpair()
    with ours, theirs:
        ours.sendall(frame_bytes({"n": 1}, b"ab") + frame_bytes({"n": 2}))
        ours.shutdown(socket.SHUT_WR)
        deadline = time.monotonic() + 5
        assert protocol.read_frame(theirs.fileno(), deadline) == ({"n": 1}, [b"ab"])
        assert protocol.read_frame(theirs.fileno(), deadline) == ({"n": 2}, [])
        assert protocol.read_frame(theirs.fileno(), deadline) is None          # a clean end


@pytest.mark.parametrize("cut", [1, 3, 4, 10, -3, -1])
def test_the_stream_ending_inside_a_frame_is_a_protocol_error(cut):
    data = frame_bytes({"seq": 1, "padding": "0123456789"}, b"abcdef")
    with pytest.raises(ProtocolError, match="ended"):
        read(data[:cut])


def test_deadlines_hold_against_a_silent_or_dripping_peer():
    data = frame_bytes({"x": "y" * 1000})
    for cut in (0, 2, 10):                                   # nothing, half a header, half a body: held open
        begun = time.monotonic()
        with pytest.raises(TimeoutError):
            read(data[:cut], seconds=0.3, close=False)
        assert 0.25 < time.monotonic() - begun < 2
    ours, theirs = socket.socketpair()
    with ours, theirs:
        stop = threading.Event()

        def drip():                                          # one byte every 20 ms, forever
            for byte in data:
                if stop.wait(0.02):
                    return
                ours.send(bytes([byte]))
        dripper = start(drip)
        begun = time.monotonic()
        with pytest.raises(TimeoutError):
            protocol.read_frame(theirs.fileno(), begun + 0.4)
        assert time.monotonic() - begun < 1.5
        stop.set()
        dripper.join(5)
    with pytest.raises(TimeoutError):                         # a deadline already past
        read(data, seconds=-1)
    assert read(data, seconds=float("inf")) == ({"x": "y" * 1000}, [])   # no deadline at all


def _refused_at_once(data: bytes, match: str):
    """read_frame refuses `data` (the writer stays open, the deadline far) at once and without allocating."""
    tracemalloc.start()
    begun = time.monotonic()
    try:
        with pytest.raises(ProtocolError, match=match):
            read(data, seconds=30, close=False)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert time.monotonic() - begun < 3, "the reader waited for bytes it should have refused"
    assert peak < 4 << 20, f"{peak:,} bytes allocated"


def test_sizes_are_refused_before_anything_is_read():
    _refused_at_once(struct.pack("!I", 2 ** 32 - 1), "larger")
    _refused_at_once(struct.pack("!I", LIMITS.json_bytes + 1), "larger")
    _refused_at_once(frame_bytes({"seq": 1}, sizes=[2 ** 40]), "total")
    _refused_at_once(frame_bytes({"seq": 1}, sizes=[LIMITS.blob_bytes // 2 + 1] * 2), "total")
    _refused_at_once(frame_bytes({"seq": 1}, sizes=[0] * (LIMITS.blobs + 1)), "too many")
    _refused_at_once(frame_bytes({"seq": 1}, sizes=[1] * 10 ** 5), "too many")


@pytest.mark.parametrize("sizes", [[-1], [1.0], [True], ["1"], [None], [[1]], {"0": 1}, "1", 1, None])
def test_malformed_blob_sizes_are_refused(sizes):
    with pytest.raises(ProtocolError, match="blob sizes"):
        read(frame_bytes({"seq": 1}, sizes=sizes) + b"x" * 8)


def test_limits_at_the_edge_pass():
    assert read(frame_bytes({"s": "x" * 1000}, *[b""] * LIMITS.blobs))[1] == [b""] * LIMITS.blobs
    bounds = protocol.Bounds(json_bytes=100, blob_bytes=10)
    ours, theirs = socket.socketpair()
    with ours, theirs:
        body = json.dumps({"pad": "x" * 60, "blobs": [4, 6]}).encode().ljust(100)
        ours.sendall(struct.pack("!I", 100) + body + b"0123456789")
        assert protocol.read_frame(theirs.fileno(), time.monotonic() + 5, bounds) == ({"pad": "x" * 60}, [b"0123", b"456789"])
        ours.sendall(frame_bytes({"pad": "x" * 100}))
        with pytest.raises(ProtocolError, match="larger"):
            protocol.read_frame(theirs.fileno(), time.monotonic() + 5, bounds)


@pytest.mark.parametrize("body", [
    b"", b"{", b"not json", b"\xff\xfe\x00garbage", b'{"a": "\xc3"}', b"[1, 2]", b'"text"', b"null", b"42",
    b'{"a": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    b'{"n": ' + b"1" * 5000 + b"}",                  # past Python's int-from-text limit: a ValueError inside json
    b'{"n": -' + b"9" * 4301 + b"}",
])
def test_frames_that_are_not_a_json_object_are_refused(body):
    with pytest.raises(ProtocolError, match="JSON"):
        read(frame_bytes(body))


def test_json_oddities_that_are_still_objects():
    assert read(frame_bytes(b'{"a": NaN, "a": 2, "b": 1e999}'))[0] == {"a": 2, "b": float("inf")}
    n = read(frame_bytes(b'{"n": ' + b"7" * 4000 + b"}"))[0]["n"]
    assert n == int("7" * 4000)


# ----------------------------------------------------------------------------- hostile values
@pytest.mark.parametrize("value", [
    {"$": "bigint", "text": "1" * 401}, {"$": "bigint", "text": "12abc"}, {"$": "bigint", "text": ""},
    {"$": "bigint", "text": 5}, {"$": "bigint"},
    {"$": "float", "text": "1e999999"}, {"$": "float", "text": "nan(123)"}, {"$": "float", "text": 1.0},
    {"$": "list"}, {"$": "list", "items": {"a": 1}}, {"$": "tuple", "items": "abc"},
    {"$": "dict", "items": [[1.5, 1]]}, {"$": "dict", "items": [["a", 1, 2]]}, {"$": "dict", "items": [[None, 1]]},
    {"$": "dict", "items": [[["k"], 1]]}, {"$": "dict", "items": {"a": 1}},
    {"$": "path", "text": ["a"]}, {"$": "ref", "id": 1}, {"$": "ref", "id": "1"},
    {"$": "pickle", "data": "gASVAAAAAAAAAACMAm9zlIwGc3lzdGVtlJOUKYWUUpQu"}, {"$": "code", "text": "1"},
    {"$": "module", "class": "Linear", "args": {"in_features": 2, "out_features": 2}, "state": {}},
    {"$": ["list"]}, {"$": None}, {"items": []}, [1, 2], {"$": "LIST", "items": []},
    {"$": "image", "mode": "RGB", "size": [1, 1], "blob": 9},
])
def test_malformed_or_unknown_values_are_refused(value):
    with pytest.raises(ProtocolError):
        protocol.decode(value, [b"\x00" * 12])
    with pytest.raises(ProtocolError):                       # whatever they are nested in
        protocol.decode({"$": "list", "items": [1, {"$": "dict", "items": [["k", value]]}]}, [b"\x00" * 12])


@pytest.mark.parametrize("kinds", ["Module", ["Module", 3], ["x" * 101], ["Module"] * 65, {"$": "list", "items": []}])
def test_a_handles_class_names_are_a_short_list_of_names(kinds):
    with pytest.raises(ProtocolError, match="class names"):
        protocol.decode({"$": "ref", "id": 1, "type": "Linear", "kinds": kinds}, [], lambda h, t, k: h)
    assert protocol.decode({"$": "ref", "id": 1, "type": "Linear", "kinds": ["Linear"] * 64}, [], lambda h, t, k: k) == ("Linear",) * 64


def test_items_and_strings_are_bounded():
    small = protocol.Bounds(items=50, string_chars=10)
    assert protocol.decode({"$": "list", "items": list(range(49))}, [], bounds=small) == list(range(49))
    with pytest.raises(ProtocolError, match="too many"):
        protocol.decode({"$": "list", "items": list(range(50))}, [], bounds=small)
    with pytest.raises(ProtocolError, match="too many"):
        protocol.decode({"$": "list", "items": [{"$": "tuple", "items": [1, 2, 3]}] * 20}, [], bounds=small)
    assert protocol.decode("x" * 10, [], bounds=small) == "x" * 10
    for value in ("x" * 11, {"$": "dict", "items": [["k" * 11, 1]]}, {"$": "path", "text": "p" * 11},
                  {"$": "list", "items": ["ok", "y" * 11]}):
        with pytest.raises(ProtocolError, match="longer"):
            protocol.decode(value, [], bounds=small)
    with pytest.raises(ProtocolError, match="too many"):
        protocol.decode({"$": "list", "items": [0] * (LIMITS.items + 1)}, [])


@pytest.mark.parametrize("shape, blob", [
    ([2, 2], b"\x00" * 12), ([2, 2], b"\x00" * 20), ([], b""), ([0], b"\x00" * 4), ([3], b"\x00" * 3),
    ([-1], b"\x00" * 4), ([-2, -2], b"\x00" * 16), ([2.0], b"\x00" * 8), ([True], b"\x00" * 4), (["2"], b"\x00" * 8),
    ([None], b""), ([[2]], b"\x00" * 8), ("2", b"\x00" * 8), ({"0": 2}, b"\x00" * 8), (None, b""),
    ([1] * 17, b"\x00" * 4), ([2 ** 40], b"\x00" * 4), ([2 ** 31] * 2, b"\x00" * 4),
    ([2 ** 62, 2 ** 62, 0], b""), ([2 ** 70, 0], b""), ([0] + [2 ** 31 - 1] * 8, b""), ([0, 2 ** 41], b""),
])
def test_tensor_and_array_shapes_must_match_their_bytes(shape, blob):
    for kind in ("tensor", "array"):
        with pytest.raises(ProtocolError, match="shape|bytes"):
            protocol.decode({"$": kind, "dtype": "float32", "shape": shape, "blob": 0}, [blob])


def test_a_huge_claimed_tensor_is_refused_without_allocating():
    tracemalloc.start()
    begun = time.monotonic()
    try:
        for kind in ("tensor", "array"):
            for dtype in ("uint8", "float64"):
                with pytest.raises(ProtocolError):
                    protocol.decode({"$": kind, "dtype": dtype, "shape": [2 ** 20, 2 ** 20], "blob": 0}, [b"\x00" * 8])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20 and time.monotonic() - begun < 2


@pytest.mark.parametrize("dtype", ["object", "float128", "complex64", "bfloat16", "torch.float32", "<f4", ">f4",
                                   "O", "V8", "str", "", "Float32", 32, None, ["float32"]])
def test_dtypes_off_the_allow_list_are_refused(dtype):
    for kind in ("tensor", "array"):
        with pytest.raises(ProtocolError, match="dtype"):
            protocol.decode({"$": kind, "dtype": dtype, "shape": [2], "blob": 0}, [b"\x00" * 8])


@pytest.mark.parametrize("index", [1, -1, 2 ** 64, True, 0.0, "0", None])
def test_blob_indices_must_name_a_blob(index):
    for value in (tensor_value("uint8", [1], index), {"$": "array", "dtype": "uint8", "shape": [1], "blob": index},
                  {"$": "image", "mode": "L", "size": [1, 1], "blob": index}):
        with pytest.raises(ProtocolError):
            protocol.decode(value, [b"\x00"])


def test_a_blob_backs_one_value_only():
    """A frame of 4 MB of JSON naming one 64 MB blob 60,000 times must not decode into 4 TB of copies."""
    blob = [b"\x00" * 1024]
    for kind in ("tensor", "array"):
        one = {"$": kind, "dtype": "uint8", "shape": [1024], "blob": 0}
        assert protocol.decode({"$": "list", "items": [one]}, blob)[0].shape == (1024,)
        with pytest.raises(ProtocolError, match="already used"):
            protocol.decode({"$": "list", "items": [one, one]}, blob)
    image = {"$": "image", "mode": "L", "size": [32, 32], "blob": 0}
    with pytest.raises(ProtocolError, match="already used"):
        protocol.decode({"$": "list", "items": [image, image]}, blob)
    with pytest.raises(ProtocolError, match="already used"):
        protocol.decode({"$": "list", "items": [image, tensor_value("uint8", [1024])]}, blob)
    # each decode is on its own: the same blobs decoded twice is fine
    assert protocol.decode(image, blob).size == protocol.decode(image, blob).size == (32, 32)


def test_bool_bytes_decode_to_genuine_bools():
    blobs = [bytes([0, 1, 2, 255])]
    t = protocol.decode(tensor_value("bool", [4]), blobs)
    assert t.tolist() == [False, True, True, True] and t.view(torch.uint8).tolist() == [0, 1, 1, 1]
    a = protocol.decode({"$": "array", "dtype": "bool", "shape": [2, 2], "blob": 0}, blobs)
    assert a.dtype == np.bool_ and a.view(np.uint8).tolist() == [[0, 1], [1, 1]]


def test_requires_grad_is_only_taken_as_true_on_floats():
    blobs = [b"\x00" * 8]
    assert not protocol.decode(tensor_value("int64", [1], requires_grad=True), blobs).requires_grad
    assert not protocol.decode(tensor_value("float64", [1], requires_grad=1), blobs).requires_grad
    assert not protocol.decode(tensor_value("float64", [1], requires_grad="yes"), blobs).requires_grad
    assert protocol.decode(tensor_value("float64", [1], requires_grad=True), blobs).requires_grad


@pytest.mark.parametrize("image", [
    {"mode": "P", "size": [1, 1]}, {"mode": "I;16", "size": [1, 1]}, {"mode": "RGB", "size": [0, 1]},
    {"mode": "L", "size": [8193, 1]}, {"mode": "L", "size": [-1, -1]}, {"mode": "L", "size": [1]},
    {"mode": "L", "size": [1, 1, 1]}, {"mode": "L", "size": [1.0, 1]}, {"mode": "L", "size": "11"},
    {"mode": "L", "size": [2, 2]}, {"mode": "RGBA", "size": [1, 1]}, {"mode": ["L"], "size": [1, 1]},
])
def test_images_must_be_of_an_allowed_mode_and_match_their_bytes(image):
    with pytest.raises(ProtocolError):
        protocol.decode({"$": "image", "blob": 0, **image}, [b"\x00" * 3])


# ----------------------------------------------------------------------------- modules: nothing imported or called
@pytest.fixture
def spies(monkeypatch):
    """Calls of os.system, eval, exec, import_module, imports by name, and a student's class, recorded."""
    calls: list = []
    real_import = builtins.__import__

    def spy(name):
        return lambda *a, **k: calls.append((name, a))
    monkeypatch.setattr(os, "system", spy("os.system"))
    monkeypatch.setattr(builtins, "eval", spy("eval"))
    monkeypatch.setattr(importlib, "import_module", spy("import_module"))

    def recording_import(name, *args, **kwargs):
        if name.split(".")[0] in ("os", "builtins", "student_notebook", "__main__", "subprocess", "pickle", "nn"):
            calls.append(("import", name))
        return real_import(name, *args, **kwargs)
    monkeypatch.setattr(builtins, "__import__", recording_import)
    student = types.ModuleType("student_notebook")

    class Net(nn.Linear):
        def __init__(self, *args, **kwargs):
            calls.append(("Net", args))
            super().__init__(*args, **kwargs)
    student.Net = Net
    monkeypatch.setitem(sys.modules, "student_notebook", student)
    yield calls


@pytest.mark.parametrize("name", [
    "os.system", "builtins.eval", "eval", "exec", "system", "student_notebook.Net", "Net", "torch.nn.Linear",
    "nn.Linear", "__main__.Net", "modules", "functional", "init", "Parameter", "parameter", "utils", "_reduction",
    "__class__", "__builtins__", "_LazyProtocol", "", "Linear ", "linear",
])
def test_a_module_class_must_be_torch_nn_own_and_is_never_imported_or_called(name, spies):
    value = {"$": "module", "class": name, "args": {"in_features": 2, "out_features": 2}, "training": False,
             "children": [], "state": {}}
    with pytest.raises(ProtocolError, match="not a torch.nn module"):
        protocol.decode(value, [], modules=True)
    with pytest.raises(ProtocolError, match="unknown kind"):          # the examiner's side: no module at all
        protocol.decode(value, [])
    wrapped = {"$": "module", "class": "Sequential", "training": True, "children": [["0", value]], "state": {}}
    with pytest.raises(ProtocolError, match="not a torch.nn module"):
        protocol.decode(wrapped, [], modules=True)
    assert spies == []


def _linear(**changes) -> dict:
    blobs: list[bytes] = []
    value = protocol.encode(nn.Linear(2, 3), blobs, modules=True)
    return {**value, **changes}, blobs + [b""]


@pytest.mark.parametrize("changes", [
    {"args": {"in_features": "2", "out_features": 3}}, {"args": {"in_features": 2}},
    {"args": {"in_features": 2, "out_features": 3, "device": "meta", "bogus": 1}},
    {"args": {"in_features": -2, "out_features": 3}}, {"args": [2, 3]}, {"args": None},
    {"state": {}}, {"state": None}, {"state": {"weight": [1]}},
    {"state": {"weight": tensor_value("float32", [2, 3], 0), "bias": tensor_value("float32", [3], 1)}},
    {"state": {"weight": tensor_value("float32", [3, 2], 0), "bias": tensor_value("float32", [3], 1),
               "extra": tensor_value("float32", [0], 2)}},
    {"state": {"weight": tensor_value("float32", [3, 2], 0), "bias": tensor_value("float32", [3], 0)}},
    {"state": {"weight": {"$": "array", "dtype": "float32", "shape": [3, 2], "blob": 0},
               "bias": tensor_value("float32", [3], 1)}},
    {"class": 7}, {"class": None},
])
def test_a_module_that_does_not_fit_its_class_is_refused(changes, spies):
    value, blobs = _linear(**changes)
    with pytest.raises(ProtocolError):
        protocol.decode(value, blobs, modules=True)
    assert spies == []


def test_a_plain_module_decodes_without_imports_or_calls(spies):
    value, blobs = _linear()
    got = protocol.decode(value, blobs, modules=True)
    assert type(got) is nn.Linear and got.weight.shape == (3, 2)
    assert spies == []


@pytest.mark.parametrize("children", [
    None, [["0"]], [[0, {"$": "module"}]], [["0", "Linear"]], [["0", [1, 2]]], [["0", {"$": "tensor"}]],
    [["0", {"$": "list", "items": []}]], [["a.b", "LINEAR"]], [["", "LINEAR"]], [["forward", "LINEAR"]],
    [["training", "LINEAR"]], [["__class__", "LINEAR"]],
])
def test_a_sequential_with_malformed_children_is_refused(children):
    linear, blobs = _linear()
    if type(children) is list:
        children = [[c[0], linear] if len(c) == 2 and c[1] == "LINEAR" else c for c in children]
    with pytest.raises(ProtocolError):
        protocol.decode({"$": "module", "class": "Sequential", "training": False, "children": children, "state": {}},
                        blobs, modules=True)


def test_nested_models_are_bounded_like_any_value():
    inner: dict = {"$": "module", "class": "ReLU", "args": {}, "training": False, "children": [], "state": {}}
    for _ in range(LIMITS.depth + 1):
        inner = {"$": "module", "class": "Sequential", "training": False, "children": [["0", inner]], "state": {}}
    with pytest.raises(ProtocolError, match="deep"):
        protocol.decode(inner, [], modules=True)
    wide = {"$": "module", "class": "Sequential", "training": False, "state": {},
            "children": [[str(i), {"$": "module", "class": "ReLU", "args": {}, "training": False, "children": [],
                                   "state": {}}] for i in range(60)]}
    assert len(protocol.decode(wide, [], modules=True)) == 60
    with pytest.raises(ProtocolError, match="too many"):
        protocol.decode(wide, [], bounds=protocol.Bounds(items=50), modules=True)


# ----------------------------------------------------------------------------- the examiner's Channel
class FakeStudent:
    """The student's end of a Channel on a socketpair: a thread reads each request and writes what
    `answer(request, blobs)` returns (raw frame bytes; None: say nothing)."""

    def __init__(self, answer):
        self.ours, self.theirs = socket.socketpair()
        self.requests: list[dict] = []
        self.thread = start(self._serve, answer)

    def _serve(self, answer) -> None:
        fd = self.theirs.fileno()
        try:
            while (frame := protocol.read_frame(fd, time.monotonic() + 30)) is not None:
                self.requests.append(frame[0])
                out = answer(*frame)
                if out is not None:
                    self.theirs.sendall(out)
        except (OSError, ProtocolError, TimeoutError):
            pass

    def channel(self, seconds: float = 10) -> Channel:
        return Channel(self.ours.fileno(), time.monotonic() + seconds)

    def close(self) -> None:
        self.ours.close()
        self.thread.join(5)
        self.theirs.close()


@pytest.fixture
def fake():
    made: list[FakeStudent] = []

    def make(answer) -> FakeStudent:
        made.append(FakeStudent(answer))
        return made[-1]
    yield make
    for student in made:
        student.close()


def ok(request: dict, value, **changes) -> bytes:
    blobs: list[bytes] = []
    encoded = protocol.encode(value, blobs, lambda v: 99)
    return frame_bytes({"seq": request["seq"], "ok": encoded, **changes}, *blobs)


def error(request: dict, name, message="from the student") -> bytes:
    return frame_bytes({"seq": request["seq"], "error": {"type": name, "message": message}})


def test_channel_asks_and_matches_answers(fake):
    student = fake(lambda request, blobs: ok(request, {"x": torch.arange(3), "model": object()}))
    channel = student.channel()
    got = channel.ask({"op": "get", "name": "x"})
    assert same_tensor(torch.arange(3), got["x"]) and type(got["model"]) is Remote
    assert repr(got["model"]) == "<the notebook's object>"
    got["model"].fc                                              # asks about handle 99
    assert student.requests == [{"op": "get", "name": "x", "seq": 1}, {"op": "attr", "of": 99, "name": "fc", "seq": 2}]


@pytest.mark.parametrize("wrong", [
    lambda r: ok(r, 1, seq=r["seq"] + 1), lambda r: ok(r, 1, seq=r["seq"] - 1), lambda r: ok(r, 1, seq=str(r["seq"])),
    lambda r: ok(r, 1, seq=None), lambda r: frame_bytes({"ok": 1}), lambda r: frame_bytes({"seq": r["seq"]}),
    lambda r: frame_bytes({"seq": r["seq"], "value": 1}), lambda r: frame_bytes(b"[1]"),
    lambda r: frame_bytes({"seq": r["seq"], "ok": {"$": "pickle", "data": ""}}),
    lambda r: frame_bytes({"seq": r["seq"], "ok": {"$": "module", "class": "ReLU", "args": {}, "training": False,
                                                   "children": [], "state": {}}}),
    lambda r: frame_bytes({"seq": r["seq"], "ok": tensor_value("float32", [2 ** 40])}, b"\x00" * 4),
    lambda r: frame_bytes({"seq": r["seq"], "ok": 1}, sizes=[2 ** 40]),
    lambda r: struct.pack("!I", 2 ** 32 - 1),
])
def test_a_wrong_answer_breaks_the_channel_for_good(fake, wrong):
    # the first answer is right, the second is not
    student = fake(lambda request, blobs: ok(request, 1) if request["seq"] == 1 else wrong(request))
    channel = student.channel(seconds=20)
    assert channel.ask({"op": "get", "name": "a"}) == 1
    begun = time.monotonic()
    with pytest.raises(ChannelBroken, match="protocol"):
        channel.ask({"op": "get", "name": "b"})
    assert time.monotonic() - begun < 5 and not channel.timed_out
    asked = len(student.requests)
    with pytest.raises(ChannelBroken):
        channel.ask({"op": "get", "name": "c"})                  # broken for good: not even asked
    time.sleep(0.05)
    assert len(student.requests) == asked


def test_a_replayed_answer_breaks_the_channel(fake):
    said: list[bytes] = []

    def answer(request, blobs):
        said.append(ok(request, request["seq"] * 10))
        return said[0]                                           # always the first answer again
    channel = fake(answer).channel()
    assert channel.ask({"op": "get", "name": "a"}) == 10
    with pytest.raises(ChannelBroken, match="out of turn"):
        channel.ask({"op": "get", "name": "a"})


def test_a_channel_breaks_when_the_student_goes_away_or_stays_silent(fake):
    student = fake(lambda request, blobs: None)
    channel = student.channel(seconds=0.3)
    with pytest.raises(ChannelBroken, match="in time"):
        channel.ask({"op": "get", "name": "a"})
    assert channel.timed_out
    student = fake(lambda request, blobs: student.theirs.shutdown(socket.SHUT_RDWR))
    channel = student.channel()
    with pytest.raises(ChannelBroken, match="ended"):
        channel.ask({"op": "get", "name": "a"})
    assert not channel.timed_out


def test_the_answers_of_one_test_are_bounded_in_total(fake, monkeypatch):
    monkeypatch.setattr(examiner, "MAX_BYTES_PER_TEST", 1000)
    channel = fake(lambda request, blobs: ok(request, torch.zeros(400, dtype=torch.uint8))).channel()
    assert channel.ask({"op": "get", "name": "a"}).shape == (400,)
    assert channel.ask({"op": "get", "name": "a"}).shape == (400,)
    with pytest.raises(ChannelBroken, match="the answers of one test would pass 0 MB"):
        channel.ask({"op": "get", "name": "a"})
    assert channel.received == 800                               # the third answer's blob was never read
    channel = fake(lambda request, blobs: ok(request, torch.zeros(400, dtype=torch.uint8))).channel()
    for _ in range(5):                                           # examine_run starts each test cell at 0
        channel.received = 0
        channel.ask({"op": "get", "name": "a"})


BUILTIN_EXCEPTIONS = sorted(n for n, v in vars(builtins).items() if isinstance(v, type) and issubclass(v, BaseException))
NOT_BUILTIN = ["StudentError", "ChannelBroken", "ProtocolError", "MyError", "os.system", "builtins.ValueError",
               "eval", "__import__", "object", "type", "", "?", "x" * 5000, 7, None, ["ValueError"]]


@pytest.mark.parametrize("name", BUILTIN_EXCEPTIONS + NOT_BUILTIN)
def test_a_student_error_is_an_ordinary_exception_that_leaves_the_channel_working(fake, name):
    answers = iter([lambda r: error(r, name, "m" * 5000), lambda r: ok(r, "still here")])
    channel = fake(lambda request, blobs: next(answers)(request)).channel()
    with pytest.raises(Exception) as raised:                     # never a BaseException only (SystemExit...)
        channel.ask({"op": "call", "of": 1, "args": [], "kwargs": {}})
    e = raised.value
    cls = getattr(builtins, name, None) if type(name) is str else None
    if type(e) is not StudentError:
        assert type(e) is cls and cls.__module__ == "builtins" and issubclass(cls, Exception)
        assert e.args == ("m" * 2000,)
    else:
        assert str(e).startswith(str(name)[:100] + ": ") and len(str(e)) <= 2102
    assert not isinstance(e, (ChannelBroken, StopIteration, StopAsyncIteration))
    assert channel.broken is None and not channel.timed_out      # e.g. a TimeoutError is not the channel's
    assert channel.ask({"op": "get", "name": "x"}) == "still here"


def test_what_each_exception_name_becomes():
    made = {name: examiner._student_exception({"type": name, "message": "msg"}) for name in BUILTIN_EXCEPTIONS}
    assert type(made["AssertionError"]) is AssertionError          # the student's own failing assert: a failure
    assert type(made["ValueError"]) is ValueError and type(made["OSError"]) is OSError
    for name in ("SystemExit", "KeyboardInterrupt", "GeneratorExit", "BaseException", "BaseExceptionGroup",
                 "StopIteration", "StopAsyncIteration", "UnicodeDecodeError"):
        assert type(made[name]) is StudentError, name
    for bad in (None, [], "text", 7):
        assert type(examiner._student_exception(bad)) is StudentError


TEST_CELLS = [
    'check_bool(S.is_cat("a.jpg"), True, "is_cat")',
    'assert S.is_cat("a.jpg") is True',
    'assert all(map(S.is_cat, ["a.jpg", "b.jpg"]))',
    'for _y in map(S.is_cat, ["a.jpg"]):\n    check_bool(_y, False)\nelse:\n    pass',
    'assert all(S.is_cat(f) for f in ["a.jpg"])',
    'assert dict(zip(["a"], map(S.is_cat, ["a"]))) == {"a": True} or not list(map(S.is_cat, ["a"]))',
    'check_tensor(S.as_batch(S.dls, 1), torch.ones(1))',
    'with examine(globals()) as S:\n    check_bool(S.is_cat("a.jpg"), True)',
    'x = S.learn\nassert len(x) == 0 or True',
    'assert getattr(S, "is_cat")("a")',
]


@pytest.mark.parametrize("name", BUILTIN_EXCEPTIONS + NOT_BUILTIN)
def test_no_exception_the_student_names_makes_a_test_pass(fake, name, monkeypatch):
    from course_utils import checks
    def answer(request, blobs):                                  # its names are there; calling them raises
        return ok(request, object()) if request["op"] == "get" else error(request, name)
    channel = fake(answer).channel()
    monkeypatch.setattr(checks, "_examiner", Student(channel))
    namespace = {"S": Student(channel), "check_bool": check_bool, "check_tensor": check_tensor, "torch": torch,
                 "examine": checks.examine}
    for source in TEST_CELLS:
        outputs = examiner.run_cell(source, dict(namespace), "t")
        errors = [o for o in outputs if o["output_type"] == "error"]
        assert errors, f"the student passed {source!r} by raising {str(name)[:40]}"
    assert not channel.timed_out and channel.broken is None


# ----------------------------------------------------------------------------- against the real student side
class Unprintable(Exception):
    def __str__(self):
        raise RuntimeError("no")


def _raise_unprintable():
    raise Unprintable()


def test_the_student_side_answers_by_value_and_keeps_the_rest():
    ours, theirs = socket.socketpair()
    net = nn.Linear(2, 2)
    namespace = {"x": torch.arange(4.0), "double": lambda t: t * 2, "net": net, "apply": lambda m, x: m(x),
                 "kinds": lambda *a, **k: [type(v).__name__ for v in (*a, *k.values())], "bad": _raise_unprintable,
                 "items": list(range(3)), "loud": lambda: 1 / 0}
    served = start(student_side.serve_test, theirs.fileno(), namespace, 4, 10)
    try:
        assert protocol.read_frame(ours.fileno(), time.monotonic() + 10) == ({"ready": 4}, [])
        channel = Channel(ours.fileno(), time.monotonic() + 30)
        S = Student(channel)
        assert same_tensor(torch.arange(4.0), S.x)
        assert same_tensor(torch.arange(4.0) * 2, S.double(torch.arange(4.0)))
        remote = S.net                                           # a model of the notebook stays there
        assert type(remote) is Remote and repr(remote) == "<the notebook's Linear>"
        assert remote is S.net and is_a(remote, "Module") and is_a(remote, "Linear") and not is_a(remote, "Conv2d")
        assert is_a(net, "Module") and not is_a(S.items, "Module")     # the same question in-process
        assert same_tensor(net.weight, remote.weight) and list(S.items) == [0, 1, 2] and len(S.items) == 3
        model = _model().eval()
        theirs_model = S.send(model)                              # the examiner's model goes over by value
        assert type(theirs_model) is Remote
        xb = torch.randn(2, 3, 16, 16)
        with torch.no_grad():
            assert torch.equal(S.apply(theirs_model, xb), model(xb))
        assert S.kinds(torch.ones(1), np.ones(1), Image.new("L", (1, 1)), pathlib.Path("p"), (1,), k=remote) == \
            ["Tensor", "ndarray", "Image", "PosixPath", "tuple", "Linear"]
        with pytest.raises(StudentError, match="Unprintable"):   # its __str__ raises: still an answer
            S.bad()
        with pytest.raises(ZeroDivisionError):
            S.loud()
        with pytest.raises(AssertionError, match="not defined"):
            S.missing
        assert channel.broken is None
        protocol.write_frame(ours.fileno(), {"op": "end"})
        served.join(10)
        assert not served.is_alive()
    finally:
        ours.close()
        served.join(10)
        theirs.close()


def test_remote_answers_must_have_the_right_type(fake):
    answers = {"len": [True, -1, "3", 2.0], "iter": [{"$": "tuple", "items": [1]}, "ab", {"$": "dict", "items": []}],
               "bool": [1, "yes"]}

    def answer(request, blobs):
        if request["op"] == "get":
            return frame_bytes({"seq": request["seq"], "ok": {"$": "ref", "id": 5, "type": "T" * 1000}})
        value = answers[request["op"]].pop(0)
        return frame_bytes({"seq": request["seq"], "ok": value})
    channel = fake(answer).channel()
    remote = Student(channel).thing
    assert len(repr(remote)) < 250
    for _ in range(4):
        with pytest.raises(TypeError):
            len(remote)
    for _ in range(3):
        with pytest.raises(TypeError):
            iter(remote)
    assert not remote and not remote
    assert channel.broken is None


def test_a_frame_is_read_from_a_descriptor_above_1023():
    """A control process with many files open (many workers, Dask) gets high descriptors: select()
    refuses those (ValueError), the channel's waits use poll."""
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 2100:
        pytest.skip(f"this process may open only {hard} files")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 2100), hard))
    ours, theirs = socket.socketpair()
    high = os.dup2(theirs.fileno(), 2000)
    try:
        protocol.write_frame(ours.fileno(), {"n": 1}, [b"ab"])
        assert protocol.ready_to_read([high], 5) == [high]
        assert protocol.read_frame(high, time.monotonic() + 5) == ({"n": 1}, [b"ab"])
        assert protocol.ready_to_read([high], 0) == []
        ours.close()
        assert protocol.read_frame(high, time.monotonic() + 5) is None     # the end of the stream, not a wait
    finally:
        os.close(high)
        theirs.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
