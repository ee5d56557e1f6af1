"""The student's end of the examiner's channel: answer the examiner's questions about the notebook, by value.

Runs inside the sandboxed notebook process when a test cell's turn comes. The examiner asks for a
name from the notebook, an attribute, an item, a call with arguments it chose, a length or the items
of an iterable; the answer is the value (see `protocol`) or, for what cannot travel, a handle the
examiner can ask about next. Nothing here decides anything: this process is the student's, and
whatever it answers is checked by the examiner. It never receives a test's source.
"""
from __future__ import annotations

import time
from typing import Any

from . import protocol

MAX_ITEMS = 10_000          # items of one iterable sent at once


class _Handles:
    """Objects the examiner holds handles on, by number, for the life of the notebook process."""

    def __init__(self) -> None:
        self._objects: dict[int, Any] = {}
        self._numbers: dict[int, int] = {}     # id(object) -> its handle; objects held here keep their id

    def issue(self, value: Any) -> int:
        """The object's handle: one number per object, so the examiner can tell the same object again."""
        number = self._numbers.get(id(value))
        if number is None:
            number = self._numbers[id(value)] = len(self._objects) + 1
            self._objects[number] = value
        return number

    def get(self, handle: Any) -> Any:
        if type(handle) is not int or handle not in self._objects:
            raise LookupError("the examiner asked about an unknown handle")
        return self._objects[handle]


_handles = _Handles()


def serve_test(fd: int, namespace: dict, index: int, deadline_seconds: float) -> None:
    """Announce test cell `index` and answer the examiner until it says the test is over."""
    protocol.write_frame(fd, {"ready": index})
    while True:
        frame = protocol.read_frame(fd, time.monotonic() + deadline_seconds)
        if frame is None:
            raise EOFError("the examiner went away")
        request, blobs = frame
        if request.get("op") == "end":
            return
        seq = request.get("seq")
        try:
            encoded, out_blobs = _answer(request, blobs, namespace)
            answer = {"ok": encoded}
        except BaseException as e:      # the student's code raised: say what, by value
            out_blobs, answer = [], {"error": {"type": type(e).__name__[:100], "message": _message(e)}}
        protocol.write_frame(fd, {"seq": seq, **answer}, out_blobs)


def _message(e: BaseException) -> str:
    """str(e), bounded; an exception whose __str__ fails still gets an answer (else the channel stops)."""
    try:
        return str(e)[:2000]
    except BaseException:
        return "(its message could not be read)"


def _rebuilt(error: Any) -> BaseException | None:
    """The exception that ended the examiner's `with` body: Python's own type by name, else Exception."""
    if type(error) is not dict:
        return None
    import builtins
    name, message = str(error.get("type", ""))[:100], str(error.get("message", ""))[:2000]
    cls = getattr(builtins, name, None)
    if not (isinstance(cls, type) and issubclass(cls, Exception)):
        cls = Exception
    try:
        return cls(message)
    except Exception:
        return Exception(message)


def _answer(request: dict, blobs: list[bytes], namespace: dict) -> tuple[Any, list[bytes]]:
    """Carry out one request; returns the encoded result and its byte blobs."""
    import torch
    op = request.get("op")
    arg = lambda v: protocol.decode(v, blobs, lambda h, _t, _k: _handles.get(h), modules=True)  # noqa: E731
    if op == "get":
        name = request.get("name")
        if type(name) is not str or name not in namespace:
            raise NameError(f"name {str(name)[:80]!r} is not defined in the notebook")
        result = namespace[name]
    elif op == "attr":
        result = getattr(_handles.get(request.get("of")), str(request.get("name")))
    elif op == "item":
        result = _handles.get(request.get("of"))[arg(request.get("key"))]
    elif op == "call":
        target = _handles.get(request.get("of"))
        args = arg({"$": "list", "items": request.get("args", [])})
        kwargs = arg({"$": "dict", "items": [[k, v] for k, v in dict(request.get("kwargs", {})).items()]})
        with torch.set_grad_enabled(bool(request.get("grad", True))):
            result = target(*args, **kwargs)
    elif op == "len":
        result = len(_handles.get(request.get("of")))
    elif op == "bool":
        result = bool(_handles.get(request.get("of")))
    elif op == "iter":
        items = []
        for item in _handles.get(request.get("of")):
            items.append(item)
            if len(items) > MAX_ITEMS:
                raise ValueError(f"more than {MAX_ITEMS} items")
        result = items
    elif op == "enter":                 # `with` on the notebook's object: its own __enter__
        target = _handles.get(request.get("of"))
        result = type(target).__enter__(target)
    elif op == "exit":                  # its __exit__, with the body's exception rebuilt by name; swallowed or not
        target = _handles.get(request.get("of"))
        error = _rebuilt(request.get("error"))
        result = bool(type(target).__exit__(target, None if error is None else type(error), error, None))
    elif op == "send":                  # keep the examiner's value here; answer with its handle
        value = arg(request.get("value"))
        return protocol.ref(_handles.issue(value), value), []
    else:
        raise ValueError(f"unknown request {str(op)[:40]!r}")
    blobs_out: list[bytes] = []
    return _located(protocol.encode(result, blobs_out, _handles.issue)), blobs_out


def _located(encoded: Any) -> Any:
    """Each handle of an answer with where its object was defined (`protocol.origins`), for the examiner's
    tripwire on answers that are the course's own (`grader.reference.Watch`)."""
    if type(encoded) is dict:
        if encoded.get("$") == "ref":
            return {**encoded, "where": protocol.origins(_handles.get(encoded["id"]))}
        return {k: _located(v) for k, v in encoded.items()}
    if type(encoded) is list:
        return [_located(v) for v in encoded]
    return encoded

