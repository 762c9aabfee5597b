"""The exceptions etap raises.

Every error is an :class:`EtapError`, which is a ``ValueError``; errors about the type of
an argument (its dtype, its array library) are :class:`EtapTypeError`, which is also a
``TypeError``. Each carries ``status`` (the library's ``etap_status`` value, an ``int``;
``ETAP_ERR_INVALID_ARGUMENT`` for the checks made in Python) and ``status_name``.
"""

ETAP_OK = 0
ETAP_ERR_INVALID_ARGUMENT = -1
ETAP_ERR_UNSUPPORTED = -2
ETAP_ERR_WORKSPACE_TOO_SMALL = -3
ETAP_ERR_NO_DEVICE = -4
ETAP_ERR_CUDA = -5
ETAP_ERR_OUT_OF_MEMORY = -6
ETAP_ERR_INTERNAL = -7
# Not an etap_status: the status of EtapLibraryError (no library to ask).
ETAP_ERR_LIBRARY_NOT_FOUND = -100

STATUS_NAMES = {
    ETAP_OK: "ETAP_OK",
    ETAP_ERR_INVALID_ARGUMENT: "ETAP_ERR_INVALID_ARGUMENT",
    ETAP_ERR_UNSUPPORTED: "ETAP_ERR_UNSUPPORTED",
    ETAP_ERR_WORKSPACE_TOO_SMALL: "ETAP_ERR_WORKSPACE_TOO_SMALL",
    ETAP_ERR_NO_DEVICE: "ETAP_ERR_NO_DEVICE",
    ETAP_ERR_CUDA: "ETAP_ERR_CUDA",
    ETAP_ERR_OUT_OF_MEMORY: "ETAP_ERR_OUT_OF_MEMORY",
    ETAP_ERR_INTERNAL: "ETAP_ERR_INTERNAL",
    ETAP_ERR_LIBRARY_NOT_FOUND: "ETAP_ERR_LIBRARY_NOT_FOUND",
}


class EtapError(ValueError):
    """An etap call failed. ``status`` is the etap_status (negative int), ``message`` the
    explanation (the C library's own message when the library reported the error)."""

    def __init__(self, message, status=ETAP_ERR_INVALID_ARGUMENT):
        super().__init__(message)
        self.message = message
        self.status = status

    @property
    def status_name(self):
        return STATUS_NAMES.get(self.status, "status %d" % self.status)


class EtapTypeError(EtapError, TypeError):
    """An argument has the wrong type or dtype (nothing is ever cast or copied)."""


class EtapLibraryError(EtapError, ImportError):
    """libetap could not be found or loaded; the message lists every place tried."""

    def __init__(self, message):
        super().__init__(message, ETAP_ERR_LIBRARY_NOT_FOUND)


def raise_for_status(status, message):
    raise EtapError(message, status)
