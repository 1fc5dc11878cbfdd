"""Run the inference server: ``python -m shipyard.serving --model-uri models:/name/1``."""

from __future__ import annotations

import argparse
import logging


def main(argv: list[str] | None = None) -> None:
    """Parse arguments and serve until stopped."""
    parser = argparse.ArgumentParser(prog="python -m shipyard.serving", description=__doc__)
    parser.add_argument("--model-uri", required=True, help="models:/name/version or any MLflow model URI")
    parser.add_argument("--model-name", default="", help="name reported by GET /version")
    parser.add_argument("--model-version", default="", help="version reported by GET /version")
    parser.add_argument("--tracking-uri", default=None,
                        help="MLflow tracking/registry URI (default: MLFLOW_TRACKING_URI, which MLflow reads itself)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5055)
    args = parser.parse_args(argv)

    import uvicorn

    from shipyard.serving.app import create_app

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = create_app(args.model_uri, args.model_name, args.model_version, args.tracking_uri)
    uvicorn.run(app, host=args.host, port=args.port, log_level="info")


if __name__ == "__main__":
    main()
