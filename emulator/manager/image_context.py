"""The build context and the failure text of a local image build (helpers of manager/images.py).

Contexts are uncompressed tars (the SDK's upload, or the engine's tar of the legacy builder sandbox's
context folder); the engine builds them with the rewritten Dockerfile added as one more file.
"""

from __future__ import annotations

import hashlib
import io
import tarfile
from pathlib import Path

from emulator.backend.image_build import BuildResult
from emulator.errors import BadRequest
from emulator.model.images import BuildRecord

# The SDK's own advice sentences (its Rust core prints them for a legacy builder's failures); the
# upstream tests look for the first sentence of each.
MEMORY_ADVICE = ("The builder sandbox ran out of memory. Retry with a larger `memory_mb` / `memoryMb` / "
                 "`--memory` value.")
DISK_ADVICE = ("The builder sandbox ran out of disk space. Retry with a larger `disk_mb` / `diskMb` value "
               "(a local build may write at most disk_mb MiB per file and its image may not exceed it).")
LOG_LINES_KEPT = 400
ERROR_LOG_LINES = 30  # of the build log, quoted in a failed build's error

REWRITTEN_DOCKERFILE = ".tensorlake-emulator/Dockerfile"
LEGACY_DOCKERFILE = ".tensorlake-emulator/Dockerfile.source"


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_context(path: Path, dockerfile_path: str) -> tuple[bytes, str]:
    """The context tar's bytes and the text of its Dockerfile. BadRequest when it has none."""
    data = path.read_bytes()
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as tar:
            member = tar.extractfile(dockerfile_path.removeprefix("./") or "Dockerfile")
            if member is None:
                raise KeyError(dockerfile_path)
            return data, member.read().decode()
    except (KeyError, tarfile.TarError, UnicodeDecodeError) as exc:
        raise BadRequest(f"the build context has no readable Dockerfile at {dockerfile_path!r}: {exc}") from exc


def with_file(context: bytes, name: str, text: str) -> bytes:
    """The context tar with one more file (the rewritten Dockerfile)."""
    out = io.BytesIO()
    with tarfile.open(fileobj=io.BytesIO(context), mode="r:*") as src, tarfile.open(fileobj=out, mode="w") as dst:
        for member in src.getmembers():
            dst.addfile(member, src.extractfile(member) if member.isfile() else None)
        body = text.encode()
        info = tarfile.TarInfo(name)
        info.size, info.mode = len(body), 0o644
        dst.addfile(info, io.BytesIO(body))
    return out.getvalue()


def rerooted(raw: bytes, dockerfile_text: str) -> bytes:
    """The engine's tar of a folder (members under its base name) as a build context rooted at that
    folder, with the legacy build's Dockerfile text added at LEGACY_DOCKERFILE."""
    out = io.BytesIO()
    with tarfile.open(fileobj=io.BytesIO(raw), mode="r:*") as src, tarfile.open(fileobj=out, mode="w") as dst:
        for member in src.getmembers():
            _, _, rest = member.name.partition("/")
            if not rest:
                continue  # the folder itself
            data = src.extractfile(member) if member.isfile() else None
            member.name = rest
            dst.addfile(member, data)
        body = dockerfile_text.encode()
        info = tarfile.TarInfo(LEGACY_DOCKERFILE)
        info.size, info.mode = len(body), 0o644
        dst.addfile(info, io.BytesIO(body))
    return out.getvalue()


def failure_message(result: BuildResult, build: BuildRecord) -> str:
    """The engine's error, the SDK's advice where the cause is known, and the log's last lines."""
    text = "\n".join(build.log[-ERROR_LOG_LINES:])
    lowered = f"{result.error}\n{text}".lower()
    advice = None
    if result.exit_code == 137 or "out of memory" in lowered or "memoryerror" in lowered:
        advice = MEMORY_ADVICE
    elif (result.exit_code == 153 or "no space left on device" in lowered or "file too large" in lowered
          or "file size limit exceeded" in lowered):
        advice = DISK_ADVICE
    parts = [p for p in (advice, result.error) if p]
    return " ".join(parts) + (f"\nBuild log (last lines):\n{text}" if text else "")
