"""Errors a user can act on. Each is raised where the bad input enters."""


class SdrtError(Exception):
    """Base class of every error sdrt raises on purpose."""


class ArtifactError(SdrtError):
    """The artifact folder is missing, incomplete, corrupt, unsafe or too new."""


class RequestError(SdrtError, ValueError):
    """A generation request has an invalid argument."""


class BackendUnavailableError(SdrtError, ImportError):
    """The backend's package is not installed, or the device is not available."""
