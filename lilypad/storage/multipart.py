"""A streaming ``multipart/form-data`` reader: parts are read as the body arrives.

The Kubo RPC upload commands (``add``, ``block/put``, ``dag/import``) take their input this way.
Reading part by part means an upload is never held whole in memory or spooled to disk: the
importer reads each file part straight from the socket. ``python-multipart``'s push parser does
the parsing; :class:`MultipartReader` turns its callbacks into a pull interface (the importer
pulls with ``read``)::

    reader = MultipartReader(content_type, chunks)   # chunks: an iterator of body bytes
    for part in reader:                              # each part must be read before the next
        data = part.read(65536)

A body that ends before its closing boundary raises :class:`TruncatedBody` when the iteration
reaches the end, so a caller that commits only after the loop commits nothing of a cut upload.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from urllib.parse import unquote

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from lilypad.errors import InputError

#: Most parts one body may hold (a result of 10,000 files is common; this bounds the tree).
MAX_PARTS = 1_000_000


class TruncatedBody(InputError):
    """The body ended before the closing boundary: the upload was cut off."""


class Part:
    """One part: its headers and a ``read`` over its body (valid until the next part)."""

    def __init__(self, reader: MultipartReader, headers: dict[str, str]) -> None:
        self._reader = reader
        self.headers = headers
        disposition = parse_options_header(headers.get("content-disposition", ""))[1]
        #: The form field name (kubo's clients send ``file``, ``file-1``, ``dir-2?mode=...``).
        self.field = disposition.get(b"name", b"").decode("utf-8", "replace")
        raw = disposition.get(b"filename", b"").decode("utf-8", "surrogateescape")
        #: The file name, URL-unescaped (kubo's clients escape paths); ``""`` when none was sent.
        self.filename = unquote(raw, errors="surrogateescape")
        kind = parse_options_header(headers.get("content-type", ""))[0]
        #: The media type, lower case, without parameters (``""`` when none was sent).
        self.content_type = kind.decode("latin-1").lower()
        self._buffer = bytearray()
        self.done = False

    def read(self, size: int = -1) -> bytes:
        """Up to ``size`` bytes of the body (the rest if ``size`` < 0); ``b""`` at its end."""
        while not self.done and (size < 0 or len(self._buffer) < size):
            data = self._reader._next_data()
            if data is None:
                self.done = True
            else:
                self._buffer += data
        if size < 0 or size >= len(self._buffer):
            out = bytes(self._buffer)
            self._buffer.clear()
        else:
            out = bytes(self._buffer[:size])
            del self._buffer[:size]
        return out

    def chunks(self, size: int = 256 * 1024) -> Iterator[bytes]:
        """The body as an iterator of chunks."""
        while chunk := self.read(size):
            yield chunk

    def drain(self) -> None:
        """Skip what is left of the body."""
        while self.read(256 * 1024):
            pass


class MultipartReader:
    """Parts of a ``multipart/form-data`` body read from an iterator of byte chunks.

    Args:
        content_type: The request's ``Content-Type`` header (it carries the boundary).
        chunks: The body, in chunks, as it arrives.

    Raises:
        InputError: Not multipart, no boundary, or a malformed body (on iteration).
        TruncatedBody: The body ends before its closing boundary (on iteration).
    """

    def __init__(self, content_type: str, chunks: Iterator[bytes]) -> None:
        kind, options = parse_options_header(content_type)
        boundary = options.get(b"boundary")
        if kind != b"multipart/form-data" or not boundary:
            raise InputError(
                f"the request body is {content_type or 'not typed'!r}; this command takes "
                "multipart/form-data with a boundary (as kubo's clients send it)"
            )
        self._chunks = chunks
        self._events: deque[tuple[str, bytes]] = deque()
        self._field = bytearray()
        self._value = bytearray()
        self.ended = False
        self._parser = MultipartParser(
            boundary,
            {
                "on_part_begin": lambda: self._events.append(("begin", b"")),
                "on_header_field": lambda d, s, e: self._field.extend(d[s:e]),
                "on_header_value": lambda d, s, e: self._value.extend(d[s:e]),
                "on_header_end": self._header_end,
                "on_headers_finished": lambda: self._events.append(("headers", b"")),
                "on_part_data": lambda d, s, e: self._events.append(("data", bytes(d[s:e]))),
                "on_part_end": lambda: self._events.append(("end", b"")),
                "on_end": self._end,
            },
        )

    def _header_end(self) -> None:
        # NOTE: queued as an event: one write may parse several parts' headers at once
        self._events.append(("header", bytes(self._field) + b"\x00" + bytes(self._value)))
        self._field.clear()
        self._value.clear()

    def _end(self) -> None:
        self.ended = True

    def _next_event(self) -> tuple[str, bytes] | None:
        """The next parser event, reading more of the body as needed; ``None`` at its end."""
        while not self._events:
            if self.ended:
                return None
            chunk = next(self._chunks, None)
            if chunk is None:
                raise TruncatedBody(
                    "the multipart body ended before its closing boundary: the upload was cut "
                    "off, so nothing of it was added; send it again"
                )
            try:
                self._parser.write(chunk)
            except MultipartParseError as exc:
                raise InputError(f"malformed multipart body: {exc}") from None
        return self._events.popleft()

    def _next_data(self) -> bytes | None:
        """The next piece of the current part's body, or ``None`` at the part's end."""
        event = self._next_event()
        while event is not None and event[0] == "data" and not event[1]:
            event = self._next_event()
        if event is None or event[0] == "end":
            return None
        if event[0] != "data":
            raise InputError(f"malformed multipart body: unexpected {event[0]} inside a part")
        return event[1]

    def __iter__(self) -> Iterator[Part]:
        count = 0
        part: Part | None = None
        while True:
            if part is not None and not part.done:
                part.drain()
            event = self._next_event()
            if event is None:
                return
            if event[0] != "begin":
                continue
            headers: dict[str, str] = {}
            while (event := self._next_event()) is not None and event[0] != "headers":
                if event[0] == "header":
                    name, _, value = event[1].partition(b"\x00")
                    key = name.decode("latin-1").strip().lower()
                    headers[key] = value.decode("utf-8", "surrogateescape").strip()
            if event is None:
                return
            count += 1
            if count > MAX_PARTS:
                raise InputError(f"the multipart body has more than {MAX_PARTS} parts")
            part = Part(self, headers)
            yield part
