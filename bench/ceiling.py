"""The HTTP ceiling: a bare FastAPI POST with the check-in route's body model and the same
token check, served exactly like a service (one uvicorn worker, uvloop, httptools) but storing
and publishing nothing. No route of ours can beat it on this machine.

`python -m bench.ceiling` (port from `OKR_BENCH_CEILING_PORT`, secret from `OKR_JWT_SECRET`).
"""

from __future__ import annotations

import os
import uuid
from typing import Annotated

import uvicorn
from fastapi import Depends, FastAPI, Header, Request
from fastapi.responses import JSONResponse

from services.checkins.http import CheckInCreate
from shared.auth import Principal, SharedSecret, bearer_token
from shared.collector import tune_collector
from shared.http import install_error_handlers


# Inline rather than in the thread pool: the leanest way to check an HS256 token.
async def principal(
    request: Request,
    authorization: Annotated[str | None, Header(include_in_schema=False)] = None,
) -> Principal:
    verifier: SharedSecret = request.app.state.verifier
    return verifier.verify(bearer_token(authorization))


def create_app(secret: str) -> FastAPI:
    app = FastAPI()
    app.state.verifier = SharedSecret(secret)
    install_error_handlers(app)

    @app.post("/v1/key-results/{key_result_id}/check-ins", status_code=201)
    async def check_in(
        key_result_id: uuid.UUID,
        body: CheckInCreate,
        who: Annotated[Principal, Depends(principal)],
    ) -> JSONResponse:
        answer = {"id": str(uuid.uuid4()), "version": 1, "position": "checkins:1"}
        return JSONResponse(answer | {"key_result_id": str(key_result_id)}, status_code=201)

    @app.get("/readyz")
    async def ready() -> dict[str, str]:
        return {"status": "ok"}

    return app


def main() -> None:
    app = create_app(os.environ["OKR_JWT_SECRET"])
    tune_collector()  # as the services' processes do: the ceiling runs as they run
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=int(os.environ["OKR_BENCH_CEILING_PORT"]),
        loop="uvloop",
        http="httptools",
        log_level="warning",
        access_log=False,
    )


if __name__ == "__main__":
    main()
