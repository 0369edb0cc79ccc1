"""Gateway errors: subclasses in the one error tree (expertmesh.errors), mapped to HTTP once by the app.

    WorkerError          502  a worker could not be reached, died mid-stream or answered something unusable
    NoWorkerError        503  no worker in rotation (all down or quarantined) or every slot busy; Retry-After
    WorkerTimeoutError   504  a worker did not answer (or send the next token) within the gateway's timeout
    AdapterRejectedError 409  a worker refused to load an expert's package (rank above its max, wrong base);
                              the message and detail name the expert, so the request can exclude it
"""
from __future__ import annotations

from expertmesh.errors import ConflictError, RemoteError
from expertmesh.serving.errors import NotReadyError, RequestTimeoutError


class WorkerError(RemoteError):
    code = "worker_error"


class NoWorkerError(NotReadyError):
    code = "no_worker"


class WorkerTimeoutError(RequestTimeoutError):
    code = "worker_timeout"


class AdapterRejectedError(ConflictError):
    code = "expert_rejected"
