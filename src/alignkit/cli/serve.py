"""`alignkit serve`: an OpenAI-compatible HTTP API (`/v1/chat/completions`, `/v1/models`) for a local model.
Parsing and printing only: the server is `alignkit.rollout.server`."""

from __future__ import annotations

import signal
import sys

from alignkit.cli.args import int_at_least


def add_serve_parser(sub) -> None:
    p = sub.add_parser(
        "serve", help="serve a model through an OpenAI-compatible API (chat completions with log-probs)",
        description="Serve a causal LM (a folder, hub id or built-in name) over HTTP with the OpenAI chat "
                    "completions API: POST /v1/chat/completions (messages through the model's chat template; "
                    "temperature 0 is greedy; seed, logprobs and top_logprobs up to 20; no streaming, n = 1) and "
                    "GET /v1/models. Any OpenAI client works: base_url http://HOST:PORT/v1, any API key. Prints "
                    "one line with the URL once the model is loaded; Ctrl-C or SIGTERM stops it.")
    p.add_argument("--model", required=True, help="the model: a folder, hub id or built-in name")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default: 127.0.0.1, this machine only; 0.0.0.0 for every "
                        "interface: there is no authentication)")
    p.add_argument("--port", type=int_at_least(0), default=8000, help="port (default: 8000; 0 picks a free one)")
    p.add_argument("--served-name", help="the model's name in the API (default: the --model argument)")
    p.add_argument("--max-tokens-limit", type=int_at_least(1), default=512,
                   help="largest max_tokens a request may ask for (default: 512)")


def _stop(signum, frame):
    raise KeyboardInterrupt


def run_serve(args) -> int:
    from alignkit.models.names import check_model
    from alignkit.rollout.server import ChatServer, LoadedModel

    if args.port > 65535:
        print(f"alignkit serve: error: --port {args.port} is not a port (0 to 65535)", file=sys.stderr)
        return 2
    check_model(args.model)
    previous = signal.signal(signal.SIGTERM, _stop)
    server = None
    try:
        server = ChatServer(args.host, args.port, args.served_name or args.model,
                            max_tokens_limit=args.max_tokens_limit)
        from alignkit.console import quiet_model_libraries

        quiet_model_libraries()
        server.engine = LoadedModel(args.model)
        print(f"serving {args.model} as {server.served_name} at {server.url}", flush=True)
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        if server is not None:
            server.server_close()
    return 0
