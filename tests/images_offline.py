"""Sandbox test images built offline: Debian packages (`apt-get download`, `dpkg-deb -x`), then
`tar | docker import`. No registry is reachable here (HOST.md), and these images are the cases issue 13
names: an image with no Python and no libc.

- busybox: nothing but a static busybox (busybox-static) and its applet links; a shell, no libc.
- musl: musl's loader and libc plus `mini` (tests/images/mini.c) linked dynamically against it; no shell.
- binary: nothing but `mini` linked statically: the "user's binary" image, no shell, no libc, no folders.

Cache: each image's tag is a digest of what went into it (the .deb files, mini.c, BUILD_VERSION), and
every image carries the label `tle.test-image=1`. A run that finds the tag skips the build (a repeat run
costs one `docker image inspect` per image); the images are KEPT between runs as a labelled cache, and
`python -m tests.images_offline --remove` (or `docker image rm` on the label) removes them all. The
downloaded packages stay in CACHE_DIR (a few MB).

Needs: apt lists (`apt-get update`), dpkg-deb, docker, and gcc for the two musl images (musl-gcc's
specs file is rewritten to point into the extracted musl-dev; musl-tools' wrapper is not needed).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

CACHE_DIR = Path(os.environ.get("TLE_TEST_IMAGE_CACHE", "/var/tmp/tle-test-images"))
LABEL = "tle.test-image"
BUILD_VERSION = "1"  # bump when the layout of an image changes
MINI_SRC = Path(__file__).resolve().parent / "images" / "mini.c"
MUSL_TRIPLE = "x86_64-linux-musl"
PASSWD = b"root:x:0:0:root:/root:/bin/sh\n"


class ImageBuildError(RuntimeError):
    """A test image could not be built; the message says which step and why (tests skip with it)."""


@dataclass(frozen=True)
class TestImage:
    """A built image: `ref` for create(image=...), `mini` the path of the test program inside it (None
    in busybox), `shell` the shell command prefix (None when the image has no shell)."""

    kind: str
    ref: str
    mini: str | None
    shell: list[str] | None


def _run(cmd: list[str], **kw: object) -> subprocess.CompletedProcess[bytes]:
    res = subprocess.run(cmd, capture_output=True, **kw)  # type: ignore[call-overload]
    if res.returncode != 0:
        raise ImageBuildError(f"{' '.join(map(str, cmd))} failed: {res.stderr.decode(errors='replace')[-500:]}")
    return res


def _deb(package: str) -> Path:
    """The package's .deb in CACHE_DIR/debs, downloaded with `apt-get download` the first time."""
    folder = CACHE_DIR / "debs"
    folder.mkdir(parents=True, exist_ok=True)
    found = sorted(folder.glob(f"{package}_*.deb"))
    if not found:
        _run(["apt-get", "download", package], cwd=folder)
        found = sorted(folder.glob(f"{package}_*.deb"))
    if not found:
        raise ImageBuildError(f"apt-get download {package} left no .deb in {folder}")
    return found[-1]


def _extract(packages: list[str]) -> Path:
    """The packages' files unpacked together into a fresh folder (removed by the caller)."""
    root = Path(tempfile.mkdtemp(prefix="tle-debs-"))
    for p in packages:
        _run(["dpkg-deb", "-x", str(_deb(p)), str(root)])
    return root


def _tag(*parts: bytes) -> str:
    h = hashlib.sha256(BUILD_VERSION.encode())
    for p in parts:
        h.update(hashlib.sha256(p).digest())
    return h.hexdigest()[:16]


def _exists(ref: str) -> bool:
    return subprocess.run(["docker", "image", "inspect", ref], capture_output=True).returncode == 0


def _import(rootfs: Path, ref: str, changes: list[str] = (), platform: str | None = None) -> None:  # type: ignore[assignment]
    """`tar -C rootfs -c . | docker import` with our label (and the given Dockerfile changes)."""
    cmd = ["docker", "import", "--change", f"LABEL {LABEL}=1"]
    for c in changes:
        cmd += ["--change", c]
    if platform:
        cmd += ["--platform", platform]
    tar = subprocess.Popen(["tar", "--numeric-owner", "--owner=0", "--group=0", "-C", str(rootfs), "-c", "."],
                           stdout=subprocess.PIPE)
    res = subprocess.run([*cmd, "-", ref], stdin=tar.stdout, capture_output=True)
    tar.wait()
    if res.returncode != 0 or tar.returncode != 0:
        raise ImageBuildError(f"docker import {ref} failed: {res.stderr.decode(errors='replace')[-500:]}")
    _drop_stale(ref)


def _drop_stale(ref: str) -> None:
    """Remove the other tags of ref's repository that carry our label (builds of older inputs)."""
    repo = ref.rsplit(":", 1)[0]
    tags = subprocess.run(["docker", "images", "--filter", f"label={LABEL}=1", "--format", "{{.Tag}}", repo],
                          capture_output=True, text=True).stdout.split()
    stale = [f"{repo}:{t}" for t in tags if f"{repo}:{t}" != ref]
    if stale:
        subprocess.run(["docker", "image", "rm", *stale], capture_output=True)


def _base_dirs(root: Path) -> None:
    for d in ("tmp", "etc", "root"):
        (root / d).mkdir(parents=True, exist_ok=True)
    (root / "tmp").chmod(0o1777)
    (root / "etc" / "passwd").write_bytes(PASSWD)


def _compile_mini(debs: Path, out: Path, static: bool) -> None:
    """gcc with musl-gcc's specs, rewritten to use the unpacked musl-dev instead of /usr (not installed)."""
    if shutil.which("gcc") is None:
        raise ImageBuildError("gcc is needed to build the musl test program (apt-get install gcc)")
    specs = (debs / "usr/lib" / MUSL_TRIPLE / "musl-gcc.specs").read_text()
    specs = specs.replace(f"/usr/include/{MUSL_TRIPLE}", str(debs / "usr/include" / MUSL_TRIPLE))
    specs = specs.replace(f"/usr/lib/{MUSL_TRIPLE}", str(debs / "usr/lib" / MUSL_TRIPLE))
    spec_file = debs / "tle-musl.specs"
    spec_file.write_text(specs)
    # -static-pie is not in musl's specs; plain -static gives a fully static executable.
    _run(["gcc", "-specs", str(spec_file), "-O2", *(["-static"] if static else []), "-o", str(out), str(MINI_SRC)])


def busybox() -> TestImage:
    """Nothing but a static busybox and links for its applets (a shell, coreutils; no libc)."""
    deb = _deb("busybox-static")
    ref = f"tle-test/busybox:{_tag(deb.read_bytes())}"
    if not _exists(ref):
        debs = _extract(["busybox-static"])
        root = Path(tempfile.mkdtemp(prefix="tle-rootfs-"))
        try:
            (root / "bin").mkdir()
            shutil.copy2(debs / "bin" / "busybox", root / "bin" / "busybox")
            applets = _run([str(root / "bin" / "busybox"), "--list-full"]).stdout.decode().split()
            for path in applets:
                link = root / path
                if link.name == "busybox" or link.exists():
                    continue
                link.parent.mkdir(parents=True, exist_ok=True)
                link.symlink_to("/bin/busybox")
            _base_dirs(root)
            _import(root, ref, ["ENV PATH=/usr/sbin:/usr/bin:/sbin:/bin"])
        finally:
            shutil.rmtree(debs, ignore_errors=True)
            shutil.rmtree(root, ignore_errors=True)
    return TestImage("busybox", ref, None, ["/bin/sh", "-c"])


def _mini_image(kind: str, static: bool) -> TestImage:
    pkgs = ["musl", "musl-dev"]
    ref = f"tle-test/{kind}:{_tag(MINI_SRC.read_bytes(), *(_deb(p).read_bytes() for p in pkgs))}"
    mini = "/mini" if static else "/usr/bin/mini"
    if not _exists(ref):
        debs = _extract(pkgs)
        root = Path(tempfile.mkdtemp(prefix="tle-rootfs-"))
        try:
            (root / mini.lstrip("/")).parent.mkdir(parents=True, exist_ok=True)
            _compile_mini(debs, root / mini.lstrip("/"), static)
            if not static:  # the loader and libc, where the executable's PT_INTERP names them
                (root / "lib" / MUSL_TRIPLE).mkdir(parents=True)
                shutil.copy2(debs / "lib" / MUSL_TRIPLE / "libc.so", root / "lib" / MUSL_TRIPLE / "libc.so")
                (root / "lib" / "ld-musl-x86_64.so.1").symlink_to(f"{MUSL_TRIPLE}/libc.so")
                _base_dirs(root)
            _import(root, ref, ["ENV PATH=/usr/bin:/bin" if not static else "ENV PATH=/"])
        finally:
            shutil.rmtree(debs, ignore_errors=True)
            shutil.rmtree(root, ignore_errors=True)
    return TestImage(kind, ref, mini, None)


def musl() -> TestImage:
    """musl's loader and libc, and `mini` linked against them (no shell)."""
    return _mini_image("musl", static=False)


def binary() -> TestImage:
    """Nothing but one static executable, /mini (no shell, no libc, no /tmp)."""
    return _mini_image("binary", static=True)


def foreign_arch(arch: str = "arm64") -> str:
    """The busybox image with its config saying another architecture (`docker save`, the config's
    "architecture" changed, `docker load`; `docker import --platform` does not set it on Docker 20.10).
    The emulator must refuse it from that field, before anything runs."""
    base = busybox()
    ref = f"tle-test/foreign-{arch}:{base.ref.split(':')[1]}"
    if not _exists(ref):
        saved = _run(["docker", "save", base.ref]).stdout
        _run(["docker", "load"], input=_retarget(saved, ref, arch))
    return ref


def _retarget(saved: bytes, ref: str, arch: str) -> bytes:
    """A `docker save` archive with its image config's architecture set to `arch`, tagged `ref`."""
    src = tarfile.open(fileobj=io.BytesIO(saved))
    manifest = json.loads(src.extractfile("manifest.json").read())  # type: ignore[union-attr]
    config = json.loads(src.extractfile(manifest[0]["Config"]).read())  # type: ignore[union-attr]
    config["architecture"] = arch
    raw = json.dumps(config).encode()
    name = hashlib.sha256(raw).hexdigest() + ".json"
    manifest[0].update(Config=name, RepoTags=[ref])
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as dst:
        for member in src.getmembers():
            top_json = member.name.endswith(".json") and "/" not in member.name  # the manifest, the old config
            if top_json or member.name == "repositories":
                continue
            dst.addfile(member, src.extractfile(member) if member.isfile() else None)
        for fname, data in ((name, raw), ("manifest.json", json.dumps(manifest).encode())):
            info = tarfile.TarInfo(fname)
            info.size = len(data)
            dst.addfile(info, io.BytesIO(data))
    return out.getvalue()


def broken_layout() -> str:
    """A busybox image whose /.tle is a regular file: the sandbox's agent mounts cannot be made in it, so
    it cannot run the agent whatever form the agent takes (runc refuses the start)."""
    base = busybox()
    ref = f"tle-test/broken-layout:{base.ref.split(':')[1]}"
    if not _exists(ref):
        root = Path(tempfile.mkdtemp(prefix="tle-rootfs-"))
        try:
            _base_dirs(root)
            (root / ".tle").write_bytes(b"not a folder\n")
            _import(root, ref)
        finally:
            shutil.rmtree(root, ignore_errors=True)
    return ref


def remove_all() -> int:
    """Remove every image labelled as a test image; returns how many were removed."""
    ids = subprocess.run(["docker", "images", "-q", "--filter", f"label={LABEL}=1"],
                         capture_output=True, text=True).stdout.split()
    if ids:
        subprocess.run(["docker", "image", "rm", "-f", *sorted(set(ids))], capture_output=True)
    return len(set(ids))


if __name__ == "__main__":
    if "--remove" in sys.argv:
        print(f"removed {remove_all()} test images")
    else:
        for build in (busybox, musl, binary):
            print(build())
        print(foreign_arch())
        print(broken_layout())
