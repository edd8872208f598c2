"""A local stand-in for the Hugging Face Hub API, for tests: standard library only, 127.0.0.1 only, in memory.

It implements what `huggingface_hub` (2.x) and transformers call to push and pull a model repo:

- `GET /api/whoami-v2`, `POST /api/repos/create`, `POST /api/validate-yaml`;
- `POST /api/models/{repo}/preupload/{rev}`: every file is answered with `uploadMode: "regular"`, so the client
  sends it base64-encoded inside the commit and never takes the LFS or Xet path (set `HF_HUB_DISABLE_XET=1` in
  the client as well);
- `POST /api/models/{repo}/commit/{rev}`: the NDJSON commit (`header`, `file`, `deletedFile`, `deletedFolder`
  lines), applied atomically; `fail_next_commits(n)` makes the next n commits fail with a 500 and change nothing;
- Spaces (`POST /api/repos/create` with `type: space`, preupload and commit under `/api/spaces/`), stored as
  `spaces/{repo}`;
- `POST /api/models/{repo}/branch/{branch}`;
- `GET /api/models/{repo}[/revision/{rev}]` (model info with `siblings` and `sha`),
  `GET /api/models/{repo}/tree/{rev}[/{path}]`, `POST /api/models/{repo}/paths-info/{rev}`;
- `HEAD`/`GET /{repo}/resolve/{rev}/{path}` with `ETag` (the git blob id), `X-Repo-Commit`, `Content-Length`,
  single `Range: bytes=a-b` requests, and the Hub's `X-Error-Code` on 404s.

Writes need `Authorization: Bearer <token>` with one of the server's tokens. Each connection serves one request
(HTTP/1.0) with a socket timeout, and bodies are capped, so no handler loops without bound.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

MAX_BODY = 256 * 1024 * 1024
REPO_PART = r"[A-Za-z0-9][A-Za-z0-9._-]*"
GITATTRIBUTES = b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n"


def git_blob_id(content: bytes) -> str:
    """The git object id of a blob, which is what the Hub gives as a regular file's `oid` and ETag."""
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


@dataclass
class Commit:
    oid: str
    files: dict[str, bytes]
    message: str
    parent: str | None
    date: str


@dataclass
class Repo:
    repo_id: str
    private: bool
    commits: dict[str, Commit] = field(default_factory=dict)
    refs: dict[str, str] = field(default_factory=dict)

    def resolve(self, revision: str) -> Commit | None:
        if revision in self.refs:
            return self.commits[self.refs[revision]]
        return self.commits.get(revision)

    def add_commit(self, files: dict[str, bytes], message: str, parent: str | None) -> Commit:
        digest = hashlib.sha1(f"{parent}\n{message}\n{len(self.commits)}".encode())
        for path in sorted(files):
            digest.update(f"{path}\0{git_blob_id(files[path])}\n".encode())
        date = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())
        commit = Commit(digest.hexdigest(), dict(files), message, parent, date)
        self.commits[commit.oid] = commit
        return commit


class HubError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.code = status, message, code


class LocalHub:
    """The server. `with LocalHub(tokens={"hf_x"}) as hub:` serves on `hub.endpoint` in a thread."""

    def __init__(self, tokens: Iterable[str], user: str = "tester"):
        self.tokens = set(tokens)
        self.user = user
        self.repos: dict[str, Repo] = {}
        self.log: list[str] = []  # "METHOD path status" per request
        self.unknown: list[str] = []  # requests no route served
        self._failures_left = 0
        self.failed_commits = 0
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------------------------- lifecycle

    def start(self) -> str:
        handler = type("Handler", (_Handler,), {"hub": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
        self._thread.start()
        return self.endpoint

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(timeout=10)
            self._server = None

    def __enter__(self) -> LocalHub:
        self.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()

    @property
    def endpoint(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    # ------------------------------------------------------------------------------------ test hooks

    def fail_next_commits(self, count: int = 1) -> None:
        with self._lock:
            self._failures_left = count

    def files(self, repo_id: str, revision: str = "main") -> dict[str, bytes]:
        with self._lock:
            return dict(self.repos[repo_id].resolve(revision).files)

    def head(self, repo_id: str, revision: str = "main") -> str:
        with self._lock:
            return self.repos[repo_id].refs[revision]

    def stored_blobs(self) -> list[bytes]:
        """Every file of every commit of every repo, and every commit message."""
        with self._lock:
            blobs = []
            for repo in self.repos.values():
                for commit in repo.commits.values():
                    blobs.extend(commit.files.values())
                    blobs.append(commit.message.encode())
            return blobs

    # -------------------------------------------------------------------------------------- the API

    def authorised(self, headers) -> bool:
        value = headers.get("Authorization", "")
        return value.startswith("Bearer ") and value[len("Bearer ") :] in self.tokens

    def repo(self, repo_id: str, headers) -> Repo:
        repo = self.repos.get(repo_id)
        if repo is None or (repo.private and not self.authorised(headers)):
            raise HubError(404, "Repository not found", "RepoNotFound")
        return repo

    def commit_of(self, repo: Repo, revision: str) -> Commit:
        commit = repo.resolve(revision)
        if commit is None:
            raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        return commit

    def whoami(self, request) -> tuple[int, dict]:
        self.require_auth(request)
        return 200, {
            "type": "user",
            "id": "0" * 24,
            "name": self.user,
            "fullname": self.user,
            "orgs": [],
            "auth": {"type": "access_token", "accessToken": {"displayName": "local", "role": "write"}},
        }

    def require_auth(self, request) -> None:
        if not self.authorised(request.headers):
            raise HubError(401, "Invalid credentials in Authorization header")

    def create_repo(self, request) -> tuple[int, dict]:
        self.require_auth(request)
        body = request.json()
        repo_type = body.get("type", "model")
        if repo_type not in ("model", "space"):
            raise HubError(400, "Only model repos and Spaces are served here")
        if repo_type == "space" and not body.get("sdk"):
            raise HubError(400, "A Space needs an sdk")
        name, namespace = body.get("name"), body.get("organization") or self.user
        if not (isinstance(name, str) and re.fullmatch(REPO_PART, name) and re.fullmatch(REPO_PART, namespace)):
            raise HubError(400, f"Invalid repo name {name!r}")
        # Spaces live under "spaces/USER/NAME", apart from models of the same name.
        repo_id = f"{namespace}/{name}" if repo_type == "model" else f"spaces/{namespace}/{name}"
        url = f"{request.base_url}/{repo_id}"
        with self._lock:
            if repo_id in self.repos:
                return 409, {"error": "You already created this model repo", "url": url}
            private = bool(body.get("private")) or body.get("visibility") == "private"
            repo = Repo(repo_id, private)
            commit = repo.add_commit({".gitattributes": GITATTRIBUTES}, "initial commit", None)
            repo.refs["main"] = commit.oid
            self.repos[repo_id] = repo
        return 200, {"url": url, "name": repo_id, "id": "1" * 24}

    def preupload(self, request, repo_id: str, revision: str) -> tuple[int, dict]:
        self.require_auth(request)
        with self._lock:
            repo = self.repo(repo_id, request.headers)
            commit = self.commit_of(repo, revision)
            files = request.json().get("files", [])
            answer = [
                {
                    "path": item["path"],
                    "uploadMode": "regular",
                    "shouldIgnore": False,
                    "oid": git_blob_id(commit.files[item["path"]]) if item["path"] in commit.files else None,
                }
                for item in files
            ]
        return 200, {"files": answer, "commitOid": commit.oid}

    def commit(self, request, repo_id: str, revision: str) -> tuple[int, dict]:
        self.require_auth(request)
        if request.query.get("create_pr"):
            raise HubError(400, "Pull requests are not served here")
        lines = [json.loads(line) for line in request.body.splitlines() if line.strip()]
        if not lines or lines[0].get("key") != "header":
            raise HubError(400, "A commit starts with a header line")
        header = lines[0]["value"]
        with self._lock:
            repo = self.repo(repo_id, request.headers)
            head = self.commit_of(repo, revision)
            if revision not in repo.refs:
                raise HubError(400, f"Commits go to a branch, not {revision}")
            if self._failures_left > 0:
                self._failures_left -= 1
                self.failed_commits += 1
                raise HubError(500, "Injected failure: the commit was not applied")
            if header.get("parentCommit") and header["parentCommit"] != head.oid:
                raise HubError(412, "The parent commit is not the head of the branch")
            files = dict(head.files)
            for line in lines[1:]:
                key, value = line.get("key"), line.get("value", {})
                if key == "file":
                    if value.get("encoding") != "base64":
                        raise HubError(400, "Regular files must be base64-encoded")
                    files[value["path"]] = base64.b64decode(value["content"])
                elif key == "deletedFile":
                    if value["path"] not in files:
                        raise HubError(404, "A file with this name doesn't exist", "EntryNotFound")
                    del files[value["path"]]
                elif key == "deletedFolder":
                    prefix = value["path"].rstrip("/") + "/"
                    files = {path: data for path, data in files.items() if not path.startswith(prefix)}
                else:
                    raise HubError(400, f"Unsupported commit operation {key!r} (this server only takes regular files)")
            summary = header.get("summary") or "commit"
            commit = repo.add_commit(files, summary, head.oid)
            repo.refs[revision] = commit.oid
        url = f"{request.base_url}/{repo_id}/commit/{commit.oid}"
        return 200, {"success": True, "commitOid": commit.oid, "commitUrl": url, "pullRequestUrl": None}

    def create_branch(self, request, repo_id: str, branch: str) -> tuple[int, dict]:
        self.require_auth(request)
        body = request.json() if request.body else {}
        with self._lock:
            repo = self.repo(repo_id, request.headers)
            if branch in repo.refs:
                return 409, {"error": f"Reference {branch} already exists"}
            start = self.commit_of(repo, body.get("startingPoint") or "main")
            repo.refs[branch] = start.oid
        return 200, {}

    def model_info(self, request, repo_id: str, revision: str) -> tuple[int, dict]:
        with self._lock:
            repo = self.repo(repo_id, request.headers)
            commit = self.commit_of(repo, revision)
            siblings = [
                {"rfilename": path, "size": len(data), "blobId": git_blob_id(data)}
                for path, data in sorted(commit.files.items())
            ]
        return 200, {
            "_id": "1" * 24,
            "id": repo_id,
            "modelId": repo_id,
            "author": repo_id.split("/")[0],
            "sha": commit.oid,
            "lastModified": commit.date,
            "private": repo.private,
            "disabled": False,
            "gated": False,
            "tags": [],
            "siblings": siblings,
        }

    @staticmethod
    def _entries(files: dict[str, bytes], commit: Commit) -> dict[str, dict]:
        """Every file and folder of a commit, as the tree and paths-info endpoints describe them."""
        entries = {}
        for path, data in files.items():
            entries[path] = {"type": "file", "path": path, "size": len(data), "oid": git_blob_id(data)}
            parts = path.split("/")
            for depth in range(1, len(parts)):
                folder = "/".join(parts[:depth])
                entries.setdefault(folder, {"type": "directory", "path": folder, "size": 0, "oid": commit.oid})
        return entries

    def tree(self, request, repo_id: str, revision: str, path: str) -> tuple[int, list]:
        with self._lock:
            commit = self.commit_of(self.repo(repo_id, request.headers), revision)
            entries = self._entries(commit.files, commit)
        path = path.strip("/")
        if path and path not in entries:
            raise HubError(404, f"{path} does not exist", "EntryNotFound")
        prefix = f"{path}/" if path else ""
        recursive = request.query.get("recursive", "false").lower() in ("true", "1")
        listed = [
            entry
            for name, entry in sorted(entries.items())
            if name.startswith(prefix) and (recursive or "/" not in name[len(prefix) :])
        ]
        return 200, listed

    def paths_info(self, request, repo_id: str, revision: str) -> tuple[int, list]:
        if request.headers.get("Content-Type", "").startswith("application/json"):
            paths = request.json().get("paths", [])
        else:
            paths = parse_qs(request.body.decode()).get("paths", [])
        with self._lock:
            commit = self.commit_of(self.repo(repo_id, request.headers), revision)
            entries = self._entries(commit.files, commit)
        return 200, [entries[path.strip("/")] for path in paths if path.strip("/") in entries]

    def resolve(self, request, repo_id: str, revision: str, path: str):
        with self._lock:
            repo = self.repo(repo_id, request.headers)
            commit = self.commit_of(repo, revision)
            data = commit.files.get(path)
        if data is None:
            raise HubError(404, f"Entry not found: {path}", "EntryNotFound")
        headers = {
            "ETag": f'"{git_blob_id(data)}"',
            "X-Repo-Commit": commit.oid,
            "Content-Type": "application/octet-stream",
            "Accept-Ranges": "bytes",
        }
        status, body = 200, data
        match = re.fullmatch(r"bytes=(\d+)-(\d*)", request.headers.get("Range", ""))
        if match:
            start = int(match.group(1))
            end = int(match.group(2)) if match.group(2) else len(data) - 1
            if start >= len(data):
                raise HubError(416, "Range not satisfiable")
            body, status = data[start : end + 1], 206
            headers["Content-Range"] = f"bytes {start}-{start + len(body) - 1}/{len(data)}"
        return status, headers, body


@dataclass
class _Request:
    method: str
    path: str
    query: dict[str, str]
    headers: object
    body: bytes
    base_url: str

    def json(self) -> dict:
        try:
            return json.loads(self.body or b"{}")
        except json.JSONDecodeError as error:
            raise HubError(400, f"Invalid JSON body: {error}") from None


_REPO = rf"(?P<repo>{REPO_PART}/{REPO_PART})"
_REV = r"(?P<rev>[^/]+)"
_ROUTES = [
    ("GET", r"/api/whoami-v2", "whoami"),
    ("POST", r"/api/repos/create", "create_repo"),
    ("POST", r"/api/validate-yaml", "validate_yaml"),
    ("POST", rf"/api/(?P<kind>models|spaces)/{_REPO}/preupload/{_REV}", "preupload"),
    ("POST", rf"/api/(?P<kind>models|spaces)/{_REPO}/commit/{_REV}", "commit"),
    ("POST", rf"/api/models/{_REPO}/branch/{_REV}", "create_branch"),
    ("GET", rf"/api/models/{_REPO}/revision/{_REV}", "model_info"),
    ("GET", rf"/api/models/{_REPO}", "model_info"),
    ("GET", rf"/api/models/{_REPO}/tree/{_REV}(?P<path>/.*)?", "tree"),
    ("POST", rf"/api/models/{_REPO}/paths-info/{_REV}", "paths_info"),
    ("GET", rf"/{_REPO}/resolve/{_REV}/(?P<path>.+)", "resolve"),
    ("HEAD", rf"/{_REPO}/resolve/{_REV}/(?P<path>.+)", "resolve"),
]


class _Handler(BaseHTTPRequestHandler):
    hub: LocalHub
    protocol_version = "HTTP/1.0"  # one request per connection
    timeout = 30  # seconds a connection may stay silent
    server_version = "LocalHub/1"

    def log_message(self, format, *args) -> None:  # keep pytest output clean
        pass

    def do_GET(self) -> None:
        self._serve("GET")

    def do_HEAD(self) -> None:
        self._serve("HEAD")

    def do_POST(self) -> None:
        self._serve("POST")

    def do_PUT(self) -> None:
        self._serve("PUT")

    def do_DELETE(self) -> None:
        self._serve("DELETE")

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            raise HubError(411, "Send a Content-Length")
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            raise HubError(413, "Request body too large")
        return self.rfile.read(length) if length else b""

    def _serve(self, method: str) -> None:
        split = urlsplit(self.path)
        status, headers, body = 404, {}, b""
        try:
            request = _Request(
                method,
                split.path,
                {key: values[-1] for key, values in parse_qs(split.query).items()},
                self.headers,
                self._read_body(),
                f"http://{self.headers.get('Host') or self.hub.endpoint[len('http://') :]}",
            )
            status, headers, body = self._route(request)
        except HubError as error:
            status, body = error.status, json.dumps({"error": error.message}).encode()
            headers = {"Content-Type": "application/json", "X-Error-Message": error.message}
            if error.code:
                headers["X-Error-Code"] = error.code
        except Exception as error:  # a bug in the server: report it, do not hang the client
            status, body = 500, json.dumps({"error": f"{type(error).__name__}: {error}"}).encode()
            headers = {"Content-Type": "application/json"}
        self.hub.log.append(f"{method} {split.path} {status}")
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if method != "HEAD":
            self.wfile.write(body)

    def _route(self, request: _Request) -> tuple[int, dict, bytes]:
        for method, pattern, name in _ROUTES:
            match = re.fullmatch(pattern, request.path)
            if method != request.method or not match:
                continue
            groups = {key: unquote(value) for key, value in match.groupdict().items() if value is not None}
            if groups.pop("kind", "models") == "spaces":
                groups["repo"] = f"spaces/{groups['repo']}"
            if name == "validate_yaml":
                return 200, {"Content-Type": "application/json"}, b'{"errors": [], "warnings": []}'
            if name == "resolve":
                return self.hub.resolve(request, groups["repo"], groups["rev"], groups["path"])
            arguments = [groups[key] for key in ("repo", "rev") if key in groups]
            if name == "model_info" and "rev" not in groups:
                arguments.append("main")
            if name == "tree":
                arguments.append(groups.get("path", ""))
            status, payload = getattr(self.hub, name)(request, *arguments)
            return status, {"Content-Type": "application/json"}, json.dumps(payload).encode()
        self.hub.unknown.append(f"{request.method} {request.path}")
        raise HubError(404, f"No route for {request.method} {request.path}")
