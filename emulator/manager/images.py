"""Sandbox images built on the local engine (issue 13 part 2): builds, the registry of names, deletes.

The flow is the SDK's CAS image flow (docs/protocol.md, "Sandbox images"): a build is admitted
(`create_build`), its tar context arrives (`write_context`) and is sealed with its sha256 (`seal`),
then a task runs `docker build` with the builder resources asked for and the SDK polls `get_build`
until the build has a result. A succeeded build registers its image under the name: the engine tag
*is* the name, so `create(image=name)` and pools need no lookup. Images are persisted (SQLite) and
labelled like snapshots (instance, namespace, session), so `cleanup`, the plugin's sweep and a reset
of a namespace or session remove them. Builds live in memory: a restart forgets unfinished ones.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from emulator.backend.base import LABEL_INSTANCE, LABEL_NAMESPACE, LABEL_PREFIX, LABEL_SESSION, RuntimeBackend
from emulator.backend.image_build import BuildLimits, DockerImageBuilder
from emulator.errors import BadRequest, EmulatorError, NotFound
from emulator.labels import LABEL_BUILD
from emulator.manager import dockerfile
from emulator.manager.image_context import (
    DISK_ADVICE,
    LEGACY_DOCKERFILE,
    LOG_LINES_KEPT,
    REWRITTEN_DOCKERFILE,
    failure_message,
    read_context,
    rerooted,
    sha256_of,
    with_file,
)
from emulator.manager.image_logs import BuilderLogMirror
from emulator.model.images import BuildRecord, ImageRecord
from emulator.model.records import now_ms
from emulator.store.sqlite import Store

log = logging.getLogger("emulator.images")

LABEL_IMAGE_NAME = f"{LABEL_PREFIX}.image-name"
# LABEL_BUILD is on every layer a build commits (a LABEL after each FROM), so the cached steps of a failed
# build are found again. Layers carrying it are exempt from the backend's dangling-image prune while a
# build runs, and pruned here when none does.


class ImageBuildInProgress(EmulatorError):
    """A second build of a name whose build is unfinished (the SDK's `image_build_in_progress`)."""

    status = 409
    code = "image_build_in_progress"

    def __init__(self, message: str, name: str, build_id: str) -> None:
        super().__init__(message)
        self.name = name
        self.build_id = build_id


class ContextMismatch(BadRequest):
    code = "context_digest_mismatch"


class ImageService:
    """Owns the image and build records. `instance` is the emulator's instance label value."""

    def __init__(self, store: Store, backend: RuntimeBackend, builder: DockerImageBuilder, data_dir: Path,
                 instance: str, default_image: str, aliases: dict[str, str], max_context_bytes: int,
                 mirrors: Callable[[BuildRecord], BuilderLogMirror] | None = None) -> None:
        self._store = store
        self._backend = backend
        self._builder = builder
        self._dir = data_dir / "image-builds"
        self._instance = instance
        self._default_image = default_image
        self._aliases = aliases
        self._max_context = max_context_bytes
        self._images: dict[str, ImageRecord] = {}
        self._builds: dict[str, BuildRecord] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._running: dict[str, asyncio.Task[None]] = {}  # build id -> its task (CAS builds)
        self._cancelled: set[str] = set()  # builds a caller cancelled (not the emulator stopping)
        # CAS builds: a sandbox whose tl-image-builder process shows the SDK the log live
        self._mirror_factory = mirrors
        self._mirrors: dict[str, BuilderLogMirror] = {}

    async def start(self) -> None:
        """Load the registered images, dropping those whose engine image is gone (removed by hand)."""
        self._dir.mkdir(parents=True, exist_ok=True)
        for stale in self._dir.glob("*.tar"):
            stale.unlink(missing_ok=True)  # contexts of builds a restart forgot
        for rec in self._store.load_images():
            if await self._builder.image_id(rec.docker_ref) is None:
                await self._store.delete_image(rec.id)
                continue
            self._images[rec.id] = rec

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    # ---- builds ----------------------------------------------------------------------------------

    def create_build(self, build: BuildRecord) -> BuildRecord:
        """Admit a build (awaiting its context). Raises ImageBuildInProgress for a name already building."""
        for other in self._builds.values():
            if other.name == build.name and other.namespace == build.namespace and not other.finished:
                raise ImageBuildInProgress(f"image {build.name!r} already has an unfinished build "
                                           f"{other.build_id}", build.name, other.build_id)
        self._builds[build.build_id] = build
        return build

    def get_build(self, build_id: str) -> BuildRecord:
        build = self._builds.get(build_id)
        if build is None:
            raise NotFound(f"build {build_id} not found")
        return build

    def _context_path(self, build_id: str) -> Path:
        return self._dir / f"{build_id}.tar"

    async def write_context(self, build_id: str, chunks: AsyncIterator[bytes]) -> int:
        """Store the uploaded tar context (bytes written). BadRequest once sealed or over the limit."""
        build = self.get_build(build_id)
        if build.phase != "awaiting_context":
            raise BadRequest(f"build {build_id} already has its context")
        path = self._context_path(build_id)
        size = 0
        with path.open("wb") as f:
            async for chunk in chunks:
                size += len(chunk)
                if size > self._max_context:
                    f.close()
                    path.unlink(missing_ok=True)
                    raise BadRequest(f"build context larger than {self._max_context} bytes "
                                     "(TLE_IMAGE_MAX_CONTEXT_BYTES)")
                await asyncio.to_thread(f.write, chunk)
        return size

    async def seal(self, build_id: str, digest: str | None) -> BuildRecord:
        """Check the context's sha256 against `digest` (hex) and start the build."""
        build = self.get_build(build_id)
        if build.phase != "awaiting_context":
            return build  # a repeated seal (an SDK retry) changes nothing
        path = self._context_path(build_id)
        if not path.exists():
            raise BadRequest(f"build {build_id} has no uploaded context to seal")
        actual = await asyncio.to_thread(sha256_of, path)
        if digest and digest.removeprefix("sha256:") != actual:
            raise ContextMismatch(f"context digest {digest} does not match the uploaded context ({actual})")
        self._move(build, "running", "starting_builder")
        if self._mirror_factory is not None:
            # Started before the answer, so the SDK's first poll already names it and follows it.
            mirror = self._mirror_factory(build)
            build.builder_sandbox_id = await mirror.start()
            if build.builder_sandbox_id is not None:
                self._mirrors[build_id] = mirror
                for line in build.log:
                    mirror.write(line)
        task = asyncio.create_task(self._run(build), name=f"image-build-{build_id}")
        self._tasks.add(task)
        self._running[build_id] = task
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(lambda _: self._running.pop(build_id, None))
        return build

    async def cancel(self, build_id: str) -> str:
        """Cancel a build (the SDK's `cancel_build`): the outcome, `cancelled` or `already_completed`,
        `already_failed`, `already_cancelled` for a finished one. Stopping the engine's build is closing
        its request: the engine cancels a build whose client went away. NotFound for an unknown id."""
        build = self.get_build(build_id)
        if build.finished:
            return {"succeeded": "already_completed", "failed": "already_failed"}.get(build.status,
                                                                                      "already_cancelled")
        self._cancelled.add(build_id)
        task = self._running.get(build_id)
        if task is None:  # still awaiting its context
            self._fail(build, "cancelled", status="cancelled")
            self._context_path(build_id).unlink(missing_ok=True)
        else:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        return "cancelled" if build.status == "cancelled" else "already_completed"

    async def complete_legacy(self, build_id: str, container_id: str, context_dir: str,
                              limits: BuildLimits) -> BuildRecord:
        """Run a legacy build to its end: the context is the folder `context_dir` of the builder sandbox
        (container `container_id`) the SDK uploaded it to; the Dockerfile came with the prepare call.
        `limits` are the builder sandbox's cpus and memory and the target rootfs size (disk_mb)."""
        build = self.get_build(build_id)
        if build.phase != "awaiting_context":
            return build
        raw = await self._builder.read_dir(container_id, context_dir)
        context = await asyncio.to_thread(rerooted, raw, build.dockerfile_text or "")
        await asyncio.to_thread(self._context_path(build_id).write_bytes, context)
        build.dockerfile_path = LEGACY_DOCKERFILE
        build.cpus, build.memory_mb, build.disk_mb = limits.cpus, limits.memory_mb, limits.disk_mb
        self._move(build, "running", "starting_builder")
        await self._run(build)
        return build

    async def _prune_build_layers(self, finishing: BuildRecord | None = None) -> None:
        """Remove the untagged layers of finished builds, unless another build is running."""
        if not any(b.status == "running" for b in self._builds.values() if b is not finishing):
            await self._builder.prune_dangling(LABEL_BUILD, self._instance)

    def _move(self, build: BuildRecord, status: str, phase: str) -> None:
        build.status = status  # type: ignore[assignment]
        build.phase = phase  # type: ignore[assignment]
        build.updated_at = now_ms()

    def _line(self, build: BuildRecord, line: str) -> None:
        build.log.append(line)
        mirror = self._mirrors.get(build.build_id)
        if mirror is not None:
            mirror.write(line)
        if len(build.log) > LOG_LINES_KEPT:
            del build.log[: len(build.log) - LOG_LINES_KEPT]
        log.debug("build %s: %s", build.build_id, line)

    async def _run(self, build: BuildRecord) -> None:
        path = self._context_path(build.build_id)
        try:
            # The engine's `labels` option commits a LABEL step per label, so this build's intermediate
            # layers are untagged and carry LABEL_INSTANCE: a snapshot delete or another build's
            # publication elsewhere would prune them mid-build ("failed to get digest").
            with self._backend.prune_exempt(LABEL_BUILD):
                await self._build(build, path)
        except asyncio.CancelledError:
            why = "cancelled" if build.build_id in self._cancelled else "the emulator stopped during the build"
            self._fail(build, why, status="cancelled")
            if build.build_id not in self._cancelled:
                raise
        except dockerfile.MissingBaseImage as exc:
            self._fail(build, str(exc))
        except EmulatorError as exc:
            self._fail(build, exc.message)
        except Exception as exc:  # a build's own failure must not take the server with it
            log.exception("build %s failed", build.build_id)
            self._fail(build, f"{type(exc).__name__}: {exc}")
        finally:
            path.unlink(missing_ok=True)
            await self._prune_build_layers(build)
            mirror = self._mirrors.pop(build.build_id, None)
            if mirror is not None:
                await mirror.finish()

    def _labels(self, build: BuildRecord) -> dict[str, str]:
        labels = {LABEL_INSTANCE: self._instance, LABEL_NAMESPACE: build.namespace, LABEL_IMAGE_NAME: build.name}
        if build.session_label:
            labels[LABEL_SESSION] = build.session_label
        return labels

    async def _build(self, build: BuildRecord, path: Path) -> None:
        tags = await self._builder.local_tags()

        def exists(ref: str) -> bool:
            return ref in tags or f"{ref}:latest" in tags

        context, text = await asyncio.to_thread(read_context, path, build.dockerfile_path)
        # LABEL_INSTANCE blanked on the layers (a base built here carries it): the snapshot prune must not
        # take a running build's last layer. The session's label stays, so its sweep finds leftovers.
        layer_labels = {LABEL_BUILD: self._instance, LABEL_INSTANCE: "", LABEL_SESSION: build.session_label or ""}
        rewritten = dockerfile.rewrite(text, layer_labels, exists, self._aliases)
        for note in rewritten.notes:
            self._line(build, f"[emulator] {note}")
        context = await asyncio.to_thread(with_file, context, REWRITTEN_DOCKERFILE, rewritten.text)
        self._move(build, "running", "executing")
        limits = BuildLimits(cpus=build.cpus, memory_mb=build.memory_mb, disk_mb=build.disk_mb)
        result = await self._builder.build(context, REWRITTEN_DOCKERFILE, build.name, limits, build.build_args,
                                           self._labels(build), lambda line: self._line(build, line))
        if result.image_id is None:
            self._fail(build, failure_message(result, build))
            return
        self._move(build, "running", "snapshotting")
        size = await self._builder.image_size(result.image_id)
        if size > build.disk_mb * 1024 * 1024:
            await self._builder.remove(build.name)
            self._fail(build, f"{DISK_ADVICE} The image is {size} bytes, over disk_mb={build.disk_mb} MiB.")
            return
        self._move(build, "running", "publishing")
        await self._register(build, result.image_id, size, text)

    async def _register(self, build: BuildRecord, docker_id: str, size: int, text: str) -> None:
        old = self.find(build.namespace, build.name)
        rec = ImageRecord(name=build.name, namespace=build.namespace, docker_ref=build.name, docker_id=docker_id,
                          family=build.family,
                          size_bytes=size, disk_mb=build.disk_mb, dockerfile=text,
                          session_label=build.session_label, build_id=build.build_id)
        if old is not None:  # a rebuild keeps the image's id, as the service's does
            rec.id, rec.created_at = old.id, old.created_at
        await self._store.save_image(rec)
        self._images[rec.id] = rec
        build.image_id = rec.id
        self._move(build, "succeeded", "finished")
        await self._backend.prune_dangling_ours()  # the previous image of the name, if no sandbox uses it

    def _fail(self, build: BuildRecord, error: str, status: str = "failed") -> None:
        if build.finished:
            return
        build.error = error
        self._move(build, status, "finished")

    # ---- images ----------------------------------------------------------------------------------

    def find(self, namespace: str, name: str, family: str | None = None) -> ImageRecord | None:
        """The image registered under `name` (of `family`, or of either)."""
        for rec in self._images.values():
            if rec.namespace == namespace and rec.name == name and family in (None, rec.family):
                return rec
        return None

    def lookup(self, namespace: str, name_or_id: str) -> ImageRecord:
        rec = self._images.get(name_or_id)
        if rec is None or rec.namespace != namespace:
            rec = self.find(namespace, name_or_id.lower())
        if rec is None:
            raise NotFound(f"image {name_or_id!r} not found")
        return rec

    def lookup_id(self, image_id: str) -> ImageRecord | None:
        return self._images.get(image_id)

    def in_namespace(self, namespace: str) -> list[ImageRecord]:
        return sorted((r for r in self._images.values() if r.namespace == namespace), key=lambda r: r.created_at)

    def result_of(self, build: BuildRecord) -> ImageRecord | None:
        return self._images.get(build.image_id) if build.image_id else None

    async def delete(self, rec: ImageRecord) -> None:
        """Forget the image and remove its engine tag (sandboxes still running from it keep running)."""
        self._images.pop(rec.id, None)
        await self._store.delete_image(rec.id)
        if await self._builder.image_id(rec.docker_ref) == rec.docker_id:
            await self._builder.remove(rec.docker_ref)
        await self._backend.prune_dangling_ours()
        await self._prune_build_layers()
        for build in self._builds.values():
            if build.image_id == rec.id:
                build.image_id = None

    async def reset(self, namespace: str | None, session: str | None) -> list[str]:
        """Delete every image of `namespace` and/or `session` (None: any); their ids."""
        gone = [r for r in list(self._images.values())
                if (namespace is None or r.namespace == namespace)
                and (session is None or r.session_label == session)]
        for rec in gone:
            await self.delete(rec)
        return [r.id for r in gone]
