"""The Artifact Storage API as far as the SDK's file-system registry uses it (docs/protocol.md §6.9).

SDK 0.5.163 makes every file-system call from its Rust core: first `POST /artifact-storage/v1/token`
with the API key as bearer, whose answer is a Git credential whose `token` is a JWT; the SDK reads the
project from the JWT's `iss` claim (it does not check the signature). Then, with that credential as
HTTP basic auth, on the same base URL (the API URL, as it is localhost):
  POST   /project/{p}/repos/{name}   {"default_branch":"main","kind":"filesystem"}  -> 2xx, body ignored
  GET    /project/{p}/repos?kind=filesystem&fresh=true&limit=1000  -> {"project","repos":[Repo],"next_after"}
  DELETE /project/{p}/repos/{name}   -> 2xx
  GET    /project/{p}/repos/{name}/meta  -> Repo
The file API (reads, writes, snapshots of a file system from outside a sandbox) moves content through
signed object-store URLs and read plans; it is not served: those paths answer 501 with the reason.
"""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict

from emulator.api import validation
from emulator.api.bodies import parse_body
from emulator.api.errors import error_body
from emulator.errors import BadRequest, NotFound
from emulator.manager.file_systems import PROJECT, FileSystems

router = APIRouter()
_TOKEN_TTL = timedelta(hours=1)


def _fs(request: Request) -> FileSystems:
    return request.app.state.manager.file_systems


def _b64(data: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(data, separators=(",", ":")).encode()).rstrip(b"=").decode()


def _project(project: str) -> None:
    if project != PROJECT:
        raise NotFound(f"project {project!r} not found (this emulator serves the project {PROJECT!r})")


@router.post("/artifact-storage/v1/token")
async def mint_token(request: Request) -> JSONResponse:
    """A Git credential: an unsigned JWT whose `iss` names the project (all the SDK reads of it)."""
    expires = datetime.now(UTC) + _TOKEN_TTL
    token = f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{_b64({'iss': PROJECT, 'exp': int(expires.timestamp())})}."
    return JSONResponse({"token": token, "tokenType": "bearer", "expiresAt": expires.isoformat().replace("+00:00", "Z"),
                         "gitUsername": "tle", "repoPattern": "*", "scopes": ["read", "write"]})


@router.get("/project/{project}/repos")
async def list_repos(request: Request, project: str) -> JSONResponse:
    _project(project)
    kind = request.query_params.get("kind")
    repos = [] if kind not in (None, "filesystem") else [r.repo() for r in _fs(request).all()]
    return JSONResponse({"project": project, "repos": repos, "next_after": None})


class CreateRepoRequest(BaseModel):
    """The body of a repository create (docs/protocol.md §6.9); the SDK sends the kind, others may not."""

    model_config = ConfigDict(extra="allow")

    kind: str = "filesystem"


@router.post("/project/{project}/repos/{name}")
async def create_repo(request: Request, project: str, name: str) -> JSONResponse:
    _project(project)
    body = await parse_body(request, CreateRepoRequest, "repository request")
    if body.kind != "filesystem":
        raise BadRequest("only repositories of kind 'filesystem' are served by this emulator")
    session = validation.session_label(request.headers.get("x-tle-session"))
    rec = await _fs(request).create(name, session or request.app.state.settings.session_label or None)
    return JSONResponse(rec.repo(), status_code=201)


@router.delete("/project/{project}/repos/{name}")
async def delete_repo(request: Request, project: str, name: str) -> Response:
    _project(project)
    await _fs(request).delete(name)
    return Response(status_code=204)


@router.get("/project/{project}/repos/{name}/meta")
async def repo_meta(request: Request, project: str, name: str) -> JSONResponse:
    _project(project)
    return JSONResponse(_fs(request).get(name).repo())


@router.api_route("/project/{project}/repos/{name}/{rest:path}", methods=["GET", "POST", "PUT", "DELETE", "PATCH"])
async def not_served(request: Request, project: str, name: str, rest: str) -> JSONResponse:
    """The file API of a file system from outside a sandbox (tensorlake.filesystem reads, writes,
    snapshots, forks; `tl fs`): not served. Mount the file system into a sandbox instead."""
    _project(project)
    _fs(request).get(name)
    return JSONResponse(error_body(
        f"the emulator does not serve the Artifact Storage file API ({request.method} .../{rest.split('/')[0]}); "
        "mount the file system into a sandbox and use the sandbox's file API", "NOT_IMPLEMENTED"), status_code=501)
