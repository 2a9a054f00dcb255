"""Command line: python -m saia.testservice --port N [--host H] [--model M] [delays]."""

from __future__ import annotations

import argparse
import logging
import os
import time
from collections.abc import Mapping, Sequence

import uvicorn

from saia.testservice.app import DEFAULT_MODEL, Settings, create_app

logger = logging.getLogger("saia.testservice")

# Bounds how long a SIGTERM (scancel, walltime) waits for open streams before exiting.
GRACEFUL_SHUTDOWN_SECONDS = 5


def non_negative_seconds(text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not seconds >= 0.0:  # also refuses NaN
        raise argparse.ArgumentTypeError(f"must be zero or more seconds: {text!r}")
    return seconds


def port_number(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port out of range 1-65535: {text!r}")
    return port


def build_parser(environ: Mapping[str, str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m saia.testservice",
        description="Deterministic OpenAI-compatible test server.",
    )
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to bind (default: %(default)s)"
    )
    parser.add_argument("--port", type=port_number, required=True, help="TCP port to listen on")
    parser.add_argument(
        "--model",
        default=environ.get("SAIA_TEST_MODEL", DEFAULT_MODEL),
        help="model name served (default: $SAIA_TEST_MODEL or %(default)s)",
    )
    # String defaults go through `type` too, so a bad environment value is reported
    # like a bad flag instead of raising a traceback.
    parser.add_argument(
        "--token-delay",
        type=non_negative_seconds,
        default=environ.get("SAIA_TEST_TOKEN_DELAY", "0"),
        help="seconds to wait before each streamed token (default: $SAIA_TEST_TOKEN_DELAY or 0)",
    )
    parser.add_argument(
        "--startup-delay",
        type=non_negative_seconds,
        default=environ.get("SAIA_TEST_STARTUP_DELAY", "0"),
        help="seconds to wait before opening the port (default: $SAIA_TEST_STARTUP_DELAY or 0)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser(os.environ).parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if args.startup_delay > 0:
        # Sleeping before binding lets callers observe a job that runs but does not listen yet,
        # like a real model server loading its weights.
        logger.info("waiting %.3g s before listening on port %d", args.startup_delay, args.port)
        time.sleep(args.startup_delay)
    # The key comes from the environment only: a command line is visible to every user.
    api_key = os.environ.get("SAIA_JOB_SECRET", "")
    app = create_app(Settings(model=args.model, token_delay=args.token_delay, api_key=api_key))
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        access_log=False,
        log_level="info",
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS,
    )


if __name__ == "__main__":
    main()
