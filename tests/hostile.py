"""Helpers for the hostile-input tests: a minimal GBIF-shaped archive with chosen photo URLs, and an HTTP server
on loopback that misbehaves the ways real image hosts do."""

from __future__ import annotations

import io
import threading
import time
import zipfile
from collections import Counter
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from PIL import Image

META = """<?xml version="1.0" encoding="utf-8"?>
<archive xmlns="http://rs.tdwg.org/dwc/text/">
  <core encoding="UTF-8" fieldsTerminatedBy="\\t" linesTerminatedBy="\\n" fieldsEnclosedBy="" ignoreHeaderLines="1"
        rowType="http://rs.tdwg.org/dwc/terms/Occurrence">
    <files><location>occurrence.txt</location></files>
    <id index="0"/>
    <field index="1" term="http://rs.gbif.org/terms/1.0/gbifID"/>
    <field index="2" term="http://rs.tdwg.org/dwc/terms/species"/>
    <field index="3" term="http://rs.gbif.org/terms/1.0/speciesKey"/>
    <field index="4" term="http://rs.tdwg.org/dwc/terms/taxonRank"/>
    <field index="5" term="http://rs.gbif.org/terms/1.0/taxonKey"/>
  </core>
  <extension encoding="UTF-8" fieldsTerminatedBy="\\t" linesTerminatedBy="\\n" fieldsEnclosedBy="" ignoreHeaderLines="1"
        rowType="http://rs.gbif.org/terms/1.0/Multimedia">
    <files><location>multimedia.txt</location></files>
    <coreid index="0"/>
    <field index="1" term="http://purl.org/dc/terms/type"/>
    <field index="2" term="http://purl.org/dc/terms/identifier"/>
  </extension>
</archive>
"""


def write_archive(path: Path, photos: list[tuple[str, str]], gbif_ids: dict[str, str] | None = None) -> Path:
    """A DwC-A zip whose occurrences (core id → species) each list their photo URLs, in the given order."""
    occurrences = list(dict.fromkeys(core for core, _ in photos))
    gbif_ids = gbif_ids or {}
    occ = ["id\tgbifID\tspecies\tspeciesKey\ttaxonRank\ttaxonKey"]
    occ += [f"{core}\t{gbif_ids.get(core, core)}\tAmanita muscaria\t5\tSPECIES\t5" for core in occurrences]
    media = ["coreid\ttype\tidentifier"] + [f"{core}\tStillImage\t{url}" for core, url in photos]
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("meta.xml", META)
        zf.writestr("occurrence.txt", "\n".join(occ) + "\n")
        zf.writestr("multimedia.txt", "\n".join(media) + "\n")
    return path


def jpeg(colour: tuple[int, int, int] = (200, 80, 40), size: int = 64) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), colour).save(buf, "JPEG")
    return buf.getvalue()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: HostileServer

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass

    def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        headers = {"Content-Type": "image/jpeg", "Content-Length": str(len(body)), **(headers or {})}
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802
        server = self.server
        path = self.path.split("?")[0]
        server.requests[path] += 1
        name = path.strip("/").split("/")[-1]
        if path.startswith("/redirect-to-"):  # /redirect-to-<host>:<port>/<path>
            target = path.split("redirect-to-", 1)[1]
            self._send(302, b"", {"Location": f"http://{target}", "Content-Type": "text/plain"})
        elif name.startswith("ok"):
            self._send(200, server.photo(path))
        elif name == "badlength.jpg":  # a Content-Length that is not a number; the body ends with the connection
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Content-Length", "abc")
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(server.photo(path))
            self.close_connection = True
        elif name == "retry-date.jpg":  # 503 with Retry-After as an HTTP date, then the photo
            if server.requests[path] == 1:
                self._send(503, b"busy", {"Retry-After": formatdate(time.time() + 1, usegmt=True),
                                          "Content-Type": "text/plain"})
            else:
                self._send(200, server.photo(path))
        elif name == "trickle.jpg":  # one byte of the body every 1.5 s: each read is within the socket timeout
            body = server.photo(path)
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            for byte in body:
                if server.stopping.is_set():
                    return
                self.wfile.write(bytes([byte]))
                self.wfile.flush()
                time.sleep(1.5)
        elif name == "empty.jpg":
            self._send(200, b"")
        elif name.startswith("big-"):  # 92 megapixels in a small PNG: above Pillow's own 89.5 MP limit
            self._send(200, server.encoded("big", "PNG"), {"Content-Type": "image/png"})
        elif name == "deep16.png":  # 16-bit greyscale, a gradient over the full 16-bit range
            self._send(200, server.encoded("deep16", "PNG"), {"Content-Type": "image/png"})
        elif name == "int32.tif":  # 32-bit integer greyscale
            self._send(200, server.encoded("int32", "TIFF"), {"Content-Type": "image/tiff"})
        elif name == "photo-v1.jpg" or name == "photo-v2.jpg":
            self._send(200, server.photo(path))
        else:
            self._send(404, b"not here", {"Content-Type": "text/plain"})


class HostileServer(ThreadingHTTPServer):
    """Serves distinct photos (by path), and the faults of _Handler, on 127.0.0.1; counts every request."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.requests: Counter = Counter()
        self._encoded: dict[str, bytes] = {}
        self.stopping = threading.Event()
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def encoded(self, kind: str, fmt: str) -> bytes:
        """A photo made once and kept: ``big`` (9,600 × 9,600 grey), ``deep16`` (16-bit), ``int32`` (32-bit)."""
        if kind not in self._encoded:
            import numpy as np

            if kind == "big":
                img = Image.new("L", (9600, 9600), 90)
            else:
                ramp = np.linspace(0, 65535 if kind == "deep16" else 4_000_000, 64 * 64).reshape(64, 64)
                img = Image.fromarray(ramp.astype(np.uint16 if kind == "deep16" else np.int32))
            buf = io.BytesIO()
            img.save(buf, fmt)
            self._encoded[kind] = buf.getvalue()
        return self._encoded[kind]

    def photo(self, path: str) -> bytes:
        digest = sum(path.encode()) % 200
        return jpeg((digest, 255 - digest, (digest * 7) % 255))

    def __enter__(self) -> HostileServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        self.shutdown()
        self.server_close()
