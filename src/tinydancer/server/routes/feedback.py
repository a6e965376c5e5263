"""POST /v1/feedback: how a routed request turned out, committed before it is acknowledged."""

from __future__ import annotations

import asyncio
import functools
import sqlite3
from typing import Any

from fastapi import APIRouter, HTTPException, Request

from ..deps import service_of
from ..schemas import FeedbackIn, FeedbackOut
from ..storage import OutcomeExistsError, StorageUnavailable, UnknownRequestError

router = APIRouter(tags=["learning"])


@router.post("/v1/feedback", response_model=FeedbackOut, summary="Record how a routed request turned out",
             responses={404: {"description": "no such decision or target"}, 409: {"description": "already recorded"},
                        503: {"description": "storage is failing: not recorded, retry"}})
async def feedback(body: FeedbackIn, request: Request) -> Any:
    service = service_of(request)
    checkpointing = getattr(service.storage, "checkpointing", None)
    while checkpointing is not None and checkpointing.is_set():
        # a checkpoint is emptying the WAL: wait for it without holding the event loop (a write
        # now would block the loop on SQLite's lock, and keep the WAL growing under load)
        await asyncio.sleep(0.002)
    storage = service.storage
    remote = getattr(storage, "remote", False)
    # a database over the network gets timeout_s to answer: one gone silent (packets dropped) is
    # refused in seconds, not after TCP gives up (44 s measured); 503 is no acknowledgement
    deadline = getattr(storage, "timeout_s", None) if remote else None

    async def record() -> str:
        await service.writer.aflush()  # the decision may still be in the group commit
        write = functools.partial(storage.record_outcome, body.request_id, body.candidate_id, body.success, body.quality,
                                  body.cost, correction=body.correction, by=getattr(request.state, "client", None))
        # waited for off the loop; SQLite's commit is quicker than the handoff
        return await asyncio.to_thread(write) if remote else write()

    try:
        if (down := storage.problem()) is not None:
            raise StorageUnavailable(down)  # refused at once, not after a connection timeout
        try:
            target = await asyncio.wait_for(record(), deadline)
        except TimeoutError:
            raise StorageUnavailable(f"the database did not answer within {deadline:g} s") from None
    except (*getattr(service.storage, "errors", (sqlite3.Error,)), OSError, StorageUnavailable) as exc:
        # never acknowledge what was not committed: the client keeps it and retries
        service.metrics.errors.labels("/v1/feedback", "storage").inc()
        raise HTTPException(503, f"feedback not recorded, the decision log cannot be written ({exc}); retry later",
                            headers={"Retry-After": "5"}) from None
    except UnknownRequestError as exc:
        service.metrics.errors.labels("/v1/feedback", "unknown_request").inc()
        raise HTTPException(404, str(exc).strip('"')) from None
    except OutcomeExistsError as exc:
        service.metrics.errors.labels("/v1/feedback", "duplicate_outcome").inc()
        raise HTTPException(409, str(exc)) from None
    service.metrics.requests.labels("/v1/feedback").inc()
    service.metrics.feedback.labels(str(body.success).lower()).inc()
    return {"status": "corrected" if body.correction else "recorded", "request_id": body.request_id, "target": target}
