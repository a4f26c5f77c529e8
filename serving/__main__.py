"""`python -m serving`: uvicorn on 127.0.0.1 unless RECALIGN_HOST says otherwise."""

import os

import uvicorn

from .app import create_app


def main() -> None:
    uvicorn.run(
        create_app(),
        host=os.environ.get("RECALIGN_HOST", "127.0.0.1"),
        port=int(os.environ.get("RECALIGN_PORT", "8000")),
        log_level=os.environ.get("RECALIGN_LOG_LEVEL", "info"),
    )


if __name__ == "__main__":
    main()
