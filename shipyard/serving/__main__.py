"""Run the inference server: ``python -m shipyard.serving [--model-uri models:/name/1]``.

Without ``--model-uri`` it starts empty and waits for a version through its token-guarded ``/admin``
endpoints. The size cap, timeout and swap token come from ``SHIPYARD_SERVING_*`` settings.
"""

from __future__ import annotations

import argparse
import logging


def main(argv: list[str] | None = None) -> None:
    """Parse arguments and serve until stopped."""
    parser = argparse.ArgumentParser(prog="python -m shipyard.serving", description=__doc__)
    parser.add_argument("--model-uri", default=None, help="models:/name/version or any MLflow model URI")
    parser.add_argument("--model-name", default="", help="name reported by GET /version")
    parser.add_argument("--model-version", default="", help="version reported by GET /version")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5055)
    args = parser.parse_args(argv)

    import uvicorn

    from shipyard.serving.app import create_app
    from shipyard.settings import load_settings

    settings = load_settings()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = create_app(args.model_uri, args.model_name, args.model_version,
                     max_bytes=settings.serving_max_request_bytes, timeout=settings.serving_timeout_seconds,
                     token=settings.serving_token)
    # No per-request access log: at thousands of requests a second it costs more than the prediction.
    uvicorn.run(app, host=args.host, port=args.port, log_level="info", access_log=False, lifespan="on")


if __name__ == "__main__":
    main()
