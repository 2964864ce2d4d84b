"""A local stand-in for the Hugging Face Hub's HTTP API, so the download path is tested without the internet.

It serves folders as model repositories at one fixed revision, answering only the requests huggingface_hub
(2.x) makes to download a snapshot: the model's info (`/api/models/{repo}[/revision/{rev}]`), its file tree
(`/api/models/{repo}/tree/{rev}`) and each file (`HEAD`/`GET /{repo}/resolve/{rev}/{path}`, with the
`X-Repo-Commit` and `ETag` headers the client reads). Every request is recorded, so a test can assert that
pickled weights were never fetched. Written by hand because no maintained package serves a folder as the Hub.
"""

from __future__ import annotations

import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse

SHA = "0123456789abcdef0123456789abcdef01234567"  # the one revision every repository is at


class LocalHub:
    """`with LocalHub({"org/name": folder}) as hub:` serves the folders at `hub.url` (set HF_ENDPOINT to it)."""

    def __init__(self, repos: dict[str, Path]) -> None:
        self.repos = {k: Path(v) for k, v in repos.items()}
        self.requests: list[tuple[str, str]] = []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:  # keep test output clean
                pass

            def do_HEAD(self) -> None:  # noqa: N802 (http.server's name)
                hub._answer(self, body=False)

            def do_GET(self) -> None:  # noqa: N802
                hub._answer(self, body=True)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> LocalHub:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def files(self, repo: str) -> list[str]:
        root = self.repos[repo]
        return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())

    def fetched(self) -> list[str]:
        """The paths of the files downloaded (GET of a resolve URL)."""
        return [path.split("/resolve/", 1)[1].split("/", 1)[1] for method, path in self.requests
                if method == "GET" and "/resolve/" in path]

    def _answer(self, h: BaseHTTPRequestHandler, body: bool) -> None:
        path = unquote(urlparse(h.path).path)
        self.requests.append((h.command, path))
        parts = path.strip("/").split("/")
        if parts[:2] == ["api", "models"] and len(parts) >= 4:
            repo = "/".join(parts[2:4])
            if repo not in self.repos:
                return self._send(h, 404, b'{"error": "Repository not found"}', body,
                                  {"X-Error-Code": "RepoNotFound"})
            rest = parts[4:]
            if rest[:1] == ["tree"]:
                tree = [{"type": "file", "path": f, "size": (self.repos[repo] / f).stat().st_size,
                         "oid": self._oid(repo, f)} for f in self.files(repo)]
                return self._send(h, 200, json.dumps(tree).encode(), body)
            info = {"id": repo, "modelId": repo, "sha": SHA, "private": False, "disabled": False,
                    "siblings": [{"rfilename": f} for f in self.files(repo)]}
            return self._send(h, 200, json.dumps(info).encode(), body)
        if "resolve" in parts:
            i = parts.index("resolve")
            repo, file = "/".join(parts[:i]), "/".join(parts[i + 2:])
            target = self.repos.get(repo, Path("/nonexistent")) / file
            if repo not in self.repos or not target.is_file():
                return self._send(h, 404, b"Entry not found", body, {"X-Error-Code": "EntryNotFound"})
            return self._send(h, 200, target.read_bytes(), body,
                              {"X-Repo-Commit": SHA, "ETag": f'"{self._oid(repo, file)}"'})
        return self._send(h, 404, b"not found", body)

    def _oid(self, repo: str, file: str) -> str:
        return hashlib.sha1((self.repos[repo] / file).read_bytes()).hexdigest()

    @staticmethod
    def _send(h: BaseHTTPRequestHandler, code: int, data: bytes, body: bool,
              headers: dict[str, str] | None = None) -> None:
        h.send_response(code)
        h.send_header("Content-Length", str(len(data)))
        h.send_header("Content-Type", "application/json" if data[:1] in (b"{", b"[") else "application/octet-stream")
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        h.end_headers()
        if body:
            h.wfile.write(data)
