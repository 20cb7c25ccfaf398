"""A Hugging Face hub on the loopback for download tests: one repository's files, served the way the hub serves
LFS files (the metadata headers huggingface_hub reads, Range requests), with ways to fail on purpose.

Point huggingface_hub at it with HF_ENDPOINT (a subprocess) or :func:`patch_endpoint` (this process).
"""
from __future__ import annotations

import hashlib
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Optional

COMMIT = "0123456789abcdef0123456789abcdef01234567"


class FakeHub(ThreadingHTTPServer):
    """Serves ``files`` ({"owner/name/filename": bytes}) under ``/owner/name/resolve/<revision>/filename``.

    ``cut_after``: the next GET sends that many bytes of its body and closes the connection, and every GET after
    it answers 500 until ``cut_after`` is reset (a transfer that breaks for good). ``served``: bytes served in
    place of the real ones (the same size, other content: a corrupted transfer). ``requests`` logs each request
    as (method, path, Range header).
    """

    daemon_threads = True

    def __init__(self, files: dict[str, bytes]):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.files = files
        self.cut_after: Optional[int] = None
        self.broken = False
        self.served: dict[str, bytes] = {}
        self.requests: list[tuple[str, str, Optional[str]]] = []
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def __enter__(self) -> "FakeHub":
        self.thread.start()
        return self

    def __exit__(self, *_) -> None:
        self.shutdown()
        self.server_close()


def patch_endpoint(monkeypatch, endpoint: str) -> None:
    """huggingface_hub in this process talks to ``endpoint`` (it reads HF_ENDPOINT once, at import), online even
    where the environment says HF_HUB_OFFLINE=1 (CI does, so that nothing else reaches the internet)."""
    from huggingface_hub import constants, file_download

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)

    template = endpoint + "/{repo_id}/resolve/{revision}/{filename}"
    # Releases before 1.0 (A1111's pin, 0.25) copied both into file_download at import.
    for module in (constants, file_download):
        for name, value in (("ENDPOINT", endpoint), ("HUGGINGFACE_CO_URL_TEMPLATE", template)):
            if hasattr(module, name):
                monkeypatch.setattr(module, name, value)
    reset_sessions()


def patch_offline(monkeypatch) -> None:
    """huggingface_hub in this process behaves as with HF_HUB_OFFLINE=1."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    reset_sessions()


def reset_sessions() -> None:
    """Forget huggingface_hub's HTTP sessions: releases before 1.0 (A1111's pin, 0.25) build one per thread with
    the offline setting of that moment, and keep its pooled connections to servers a test has closed."""
    from huggingface_hub import utils

    if hasattr(utils, "reset_sessions"):
        utils.reset_sessions()


class _Handler(BaseHTTPRequestHandler):
    server: FakeHub

    def log_message(self, *_) -> None:  # quiet: pytest shows failures, not request logs
        return None

    def _file(self) -> Optional[tuple[str, bytes]]:
        parts = self.path.split("/")  # "", owner, name, "resolve", revision, filename
        if len(parts) != 6 or parts[3] != "resolve":
            return None
        key = f"{parts[1]}/{parts[2]}/{parts[5]}"
        return (key, self.server.files[key]) if key in self.server.files else None

    def _headers(self, content: bytes, status: int = 200, start: int = 0) -> None:
        self.send_response(status)
        self.send_header("X-Repo-Commit", COMMIT)
        self.send_header("X-Linked-Etag", f'"{hashlib.sha256(content).hexdigest()}"')
        self.send_header("X-Linked-Size", str(len(content)))
        self.send_header("Accept-Ranges", "bytes")
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{len(content) - 1}/{len(content)}")
        self.send_header("Content-Length", str(len(content) - start))
        self.end_headers()

    def do_HEAD(self) -> None:
        self.server.requests.append(("HEAD", self.path, None))
        found = self._file()
        if found is None:
            self.send_error(404)
            return
        self._headers(found[1])

    def do_GET(self) -> None:
        range_header = self.headers.get("Range")
        self.server.requests.append(("GET", self.path, range_header))
        found = self._file()
        if found is None:
            self.send_error(404)
            return
        if self.server.broken:
            self.send_error(500)
            return
        key, content = found
        start = int(range_header.split("=")[1].split("-")[0]) if range_header else 0
        self._headers(content, 206 if start else 200, start)
        body = self.server.served.get(key, content)[start:]
        if self.server.cut_after is not None:
            body, self.server.broken = body[:self.server.cut_after], True
        self.wfile.write(body)
        self.wfile.flush()
        if self.server.broken:
            self.close_connection = True
