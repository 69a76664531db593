"""Typed errors of the emulator. They are mapped to HTTP answers in one place: api/errors.py."""

from __future__ import annotations


class EmulatorError(Exception):
    status = 500
    code = "INTERNAL"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadRequest(EmulatorError):
    status = 400
    code = "BAD_REQUEST"


class NotFound(EmulatorError):
    status = 404
    code = "NOT_FOUND"


class PoolNotFound(NotFound):
    """The SDK raises PoolNotFoundError on a 404 of a pool call (PROTOCOL.md §13)."""


class PoolInUse(EmulatorError):
    """Deleting a pool that has active claimed sandboxes: the SDK raises PoolInUseError on the 409."""

    status = 409
    code = "POOL_IN_USE"


class NameConflict(EmulatorError):
    status = 409
    code = "NAME_CONFLICT"


class InvalidState(EmulatorError):
    status = 409
    code = "INVALID_STATE"


class SnapshotFailed(EmulatorError):
    """CRIU could not dump the sandbox's process state (suspend or memory checkpoint); the message
    names the cause from CRIU's dump log. The sandbox keeps running as it was."""

    status = 409
    code = "SNAPSHOT_FAILED"

    def __init__(self, message: str, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent  # the same dump would fail again at once: no point retrying


class EphemeralSandbox(EmulatorError):
    status = 400
    code = "EPHEMERAL_SANDBOX"


class NotSupported(EmulatorError):
    status = 400
    code = "NOT_SUPPORTED_ON_THIS_HOST"


class ImageNotFound(EmulatorError):
    status = 400
    code = "IMAGE_NOT_FOUND"


class ImageIncompatible(EmulatorError):
    """The image exists but cannot hold a sandbox: built for another architecture, or the sandbox agent
    cannot start in it (a mount point taken by a file, an exec refused); the message names the cause."""

    status = 400
    code = "IMAGE_INCOMPATIBLE"


class EntrypointNotFound(EmulatorError):
    """The entrypoint asked for at create is not in the image (its path, or nowhere on the image's PATH)."""

    status = 400
    code = "ENTRYPOINT_NOT_FOUND"


class RuntimeMissing(EmulatorError):
    status = 400
    code = "RUNTIME_NOT_AVAILABLE"


class BackendUnavailable(EmulatorError):
    """The engine could not be reached; 503 so the SDK retries and nothing was changed."""

    status = 503
    code = "BACKEND_UNAVAILABLE"


class SandboxNotReady(EmulatorError):
    status = 503
    code = "SANDBOX_NOT_READY"


class SandboxNotRunning(EmulatorError):
    status = 503
    code = "SANDBOX_NOT_RUNNING"


class SandboxNotFound(EmulatorError):
    """Proxy flavour of not-found (the dataplane's code)."""

    status = 404
    code = "SANDBOX_NOT_FOUND"


class MissingSandboxId(EmulatorError):
    status = 400
    code = "MISSING_SANDBOX_ID"


class Unauthorized(EmulatorError):
    """No or a wrong bearer token while TLE_API_KEY is set; the SDK raises RemoteAPIError(401)."""

    status = 401
    code = "UNAUTHORIZED"


class HostNotAllowed(EmulatorError):
    """A Host or Origin that is not one of the emulator's own names (DNS-rebinding defence)."""

    status = 403
    code = "HOST_NOT_ALLOWED"


class RequestTimeout(EmulatorError):
    status = 408
    code = "REQUEST_TIMEOUT"


class PayloadTooLarge(EmulatorError):
    status = 413
    code = "PAYLOAD_TOO_LARGE"


class FileSystemNotFound(NotFound):
    code = "FILE_SYSTEM_NOT_FOUND"


class FileSystemInUse(EmulatorError):
    """Deleting a file system still mounted in a live sandbox (the emulator refuses; data stays)."""

    status = 409
    code = "FILE_SYSTEM_IN_USE"


class FileSystemExists(EmulatorError):
    status = 409
    code = "FILE_SYSTEM_EXISTS"
