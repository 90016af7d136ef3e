"""`alignkit label import | invite | serve | status | export`: parsing and printing only; the work is done in
`alignkit.label`."""

from __future__ import annotations

import argparse
import errno
import ipaddress
import json
import socket
import sys

from alignkit.cli.args import float_in, int_at_least
from alignkit.label import DEFAULT_DB

DB_HELP = ("the labeling database: a file path (SQLite) or postgresql://USER:PASSWORD@HOST:PORT/NAME "
           f"(default: {DEFAULT_DB})")
EXAMPLES = """examples:
  alignkit sample --model runs/sft --prompts prompts.jsonl -k 2 --output samples.jsonl
  alignkit label import samples.jsonl --per-item 3
  alignkit label import checks.jsonl --gold              (known answers: chosen is right)
  alignkit label import samples.jsonl --thumbs           (each response judged on its own: good or bad)
  alignkit label invite alice --url http://127.0.0.1:8000
  alignkit label invite boss --admin
  alignkit label serve --port 8000 --url http://127.0.0.1:8000
  alignkit label status
  alignkit label export --output-dir labels/ && alignkit dpo --loss gdpo --data labels/soft_pairs.jsonl ...
                                                         (thumbs items: labels/kto.jsonl, KTO data)
"""


def base_url(text: str) -> str:
    """--url: the app's address as annotators reach it (http or https, a host, optional port and path)."""
    from alignkit.errors import ConfigError
    from alignkit.label import check_base_url

    try:
        return check_base_url(text)
    except ConfigError as e:
        raise argparse.ArgumentTypeError(str(e).removeprefix(f"--url {text!r}: ")) from None


base_url.__name__ = "URL"


def port_number(text: str) -> int:
    value = int_at_least(0)(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"must be at most 65535, got {value}")
    return value


port_number.__name__ = "int"


def add_label_parser(sub) -> None:
    label = sub.add_parser(
        "label", help="collect preferences from people: a labeling web app over a database, soft labels out",
        description="Collect preference labels from people. Import items (pairs, K responses per prompt, or "
                    "single responses judged good or bad), "
                    "invite annotators (personal links), serve the labeling app, watch progress and agreement, "
                    "and export pairs with hard and soft labels, rankings, KTO data and raw votes for the trainers.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    cmds = label.add_subparsers(dest="label_command", metavar="SUBCOMMAND", required=True)

    imp = cmds.add_parser(
        "import", help="add items to label from data files (creates the database if needed)",
        description="Add items from JSON-lines/JSON/Parquet files: K-response sets {prompt, responses} (K = 2: a "
                    "pair, K > 2: a ranking task; with --thumbs each response on its own), pairs {prompt, chosen, "
                    "rejected} or {prompt, response_a, response_b}, or single responses {prompt, completion} (a "
                    "thumbs item: good or bad). An item already in the database is not added twice.")
    imp.add_argument("files", nargs="+", metavar="FILE", help="data files to import")
    imp.add_argument("--db", default=DEFAULT_DB, help=DB_HELP)
    imp.add_argument("--per-item", type=int_at_least(1), default=3, metavar="R",
                     help="distinct annotators wanted for each item (default: 3)")
    imp.add_argument("--gold", action="store_true",
                     help="gold (attention-check) items with a known answer: `chosen` for pairs (a `label` of 0.5: "
                          "'about the same'), the given order for `responses` (best first), `label` (true: good, "
                          "false: bad) for {prompt, completion}; status reports each annotator's score on them, "
                          "export leaves them out unless --include-gold")
    imp.add_argument("--thumbs", action="store_true",
                     help="single-response items judged good or bad: every response of a {prompt, responses} record "
                          "becomes its own item ({prompt, completion} records always are); export writes kto.jsonl")
    imp.add_argument("--skip-invalid", action="store_true",
                     help="skip invalid records (counted and reported) instead of stopping at the first one")

    inv = cmds.add_parser("invite", help="create an annotator and print their personal link",
                          description="Create an annotator and print their personal link and token. Only a hash "
                                      "of the token is stored, so it is shown this once (--new-token replaces it).")
    inv.add_argument("name", help="the annotator's name (unique)")
    inv.add_argument("--db", default=DEFAULT_DB, help=DB_HELP)
    inv.add_argument("--admin", action="store_true", help="may open the admin page and invite others")
    inv.add_argument("--new-token", action="store_true", help="replace an existing annotator's token")
    inv.add_argument("--url", type=base_url, default="http://127.0.0.1:8000",
                     help="the app's address as annotators reach it, for the link (default: http://127.0.0.1:8000)")

    srv = cmds.add_parser("serve", help="run the labeling web app",
                          description="Run the labeling web app. Annotators open their personal link and confirm "
                                      "the sign-in; the admin page is /admin. Every accepted vote is committed "
                                      "before the reply. The port is taken before anything else is done: a port "
                                      "in use is one error line (exit 2).")
    srv.add_argument("--db", default=DEFAULT_DB, help=DB_HELP)
    srv.add_argument("--host", default="127.0.0.1",
                     help="address to listen on (default: 127.0.0.1, this machine only; any other address warns "
                          "unless --secure-cookies)")
    srv.add_argument("--port", type=port_number, default=8000, help="port to listen on (default: 8000; 0: any free port)")
    srv.add_argument("--url", type=base_url, default=None,
                     help="the app's address as annotators reach it (e.g. https://labels.example), for the links "
                          "of invites made on the admin page; links are never built from a request's Host header, "
                          "so without --url the admin page gives tokens, not links")
    srv.add_argument("--task-timeout", type=float_in(0), default=3600, metavar="SECONDS",
                     help="how long an unanswered task keeps its place before the item may go to someone else "
                          "(default: 3600)")
    srv.add_argument("--max-request-bytes", type=int_at_least(1024), default=64 * 1024,
                     help="refuse larger request bodies (default: 65536)")
    srv.add_argument("--secure-cookies", action="store_true",
                     help="mark the sign-in cookies Secure (set this when the app is served over HTTPS)")

    st = cmds.add_parser("status", help="progress, per-annotator counts, gold scores and agreement",
                         description="Show progress (items complete, votes, skips), per-annotator counts with "
                                     "their score on gold items, and agreement on pair items (mean pairwise "
                                     "agreement and Fleiss' kappa over a / b / about the same) and on thumbs items "
                                     "(over good / bad).")
    st.add_argument("--db", default=DEFAULT_DB, help=DB_HELP)
    st.add_argument("--json", action="store_true", help="print the status as JSON")

    ex = cmds.add_parser(
        "export", help="write pairs (hard and soft labels), rankings and raw votes",
        description="Write to --output-dir: pairs.jsonl (hard labels by majority; exact ties left out and "
                    "counted), soft_pairs.jsonl (label = vote share, for --loss gdpo / cdpo), rankings.jsonl "
                    "(K-way items by mean position), votes.jsonl (pair items with every vote, the 'votes' "
                    "format) and ranking_votes.jsonl (every ranking vote); when there are thumbs items, also "
                    "kto.jsonl ({prompt, completion, label}: label true when most votes say good; exact ties "
                    "left out and counted) and thumbs_votes.jsonl (every thumbs vote).")
    ex.add_argument("--db", default=DEFAULT_DB, help=DB_HELP)
    ex.add_argument("--output-dir", required=True, help="folder for the exported files")
    ex.add_argument("--min-votes", type=int_at_least(1), default=1,
                    help="put only items with at least this many votes in pairs/soft_pairs/rankings/kto "
                         "(default: 1)")
    ex.add_argument("--include-gold", action="store_true",
                    help="also put gold items in pairs/soft_pairs/rankings/kto")


def run_label(args) -> int:
    from alignkit.label import store
    from alignkit.label.db import open_db

    cmd = args.label_command
    if cmd == "serve":
        return _serve(args)
    imports = _read_imports(args) if cmd == "import" else []  # every file checked before the database is touched
    engine = open_db(args.db, create=cmd in ("import", "invite"))
    try:
        if cmd == "import":
            return _import(engine, args, imports)
        if cmd == "invite":
            token = store.invite(engine, args.name, admin=args.admin, new_token=args.new_token)
            print(f"{'admin' if args.admin else 'annotator'} {args.name.strip()}: {args.url}/login?token={token}")
            print(f"token (shown only now): {token}")
            return 0
        if cmd == "status":
            report = store.status(engine)
            print(json.dumps(report, indent=2) if args.json else _status_text(report))
            return 0
        counts = store.export(engine, args.output_dir, min_votes=args.min_votes, include_gold=args.include_gold)
        for name in (n for n in store.EXPORT_FILES if n in counts):
            print(f"{args.output_dir.rstrip('/')}/{name}: {counts[name]} records")
        notes = {k: v for k, v in counts.items() if k not in store.EXPORT_FILES and v}
        if notes:
            print("; ".join(f"{k.replace('_', ' ')}: {v}" for k, v in notes.items()))
        return 0
    finally:
        engine.dispose()


def _read_imports(args) -> list:
    """(path, items, report) of every file to import: a bad file stops the import before anything is written."""
    from alignkit.label.importer import read_items

    return [(path, *read_items(path, gold=args.gold, thumbs=args.thumbs, skip_invalid=args.skip_invalid))
            for path in args.files]


def _import(engine, args, imports: list) -> int:
    from alignkit.label.store import add_items

    for path, new, report in imports:
        counts = add_items(engine, new, args.per_item)
        print(report.summary(), file=sys.stderr)
        for error in report.errors[:5]:
            print(f"  skipped: {error}", file=sys.stderr)
        kinds = ", ".join(f"{sum(i.kind == kind for i in new)} {name}"
                          for kind, name in (("pair", "pairs"), ("ranking", "rankings"), ("thumbs", "thumbs")))
        print(f"{path}: {len(new)} {'gold ' if args.gold else ''}items ({kinds}): {counts['added']} added, "
              f"{counts['duplicates']} already in the database; {args.per_item} annotators wanted per item")
    return 0


def _listen(host: str, port: int) -> socket.socket:
    """A socket bound to host:port (and listening), or one error line: the port is checked before the
    database is opened or anything is printed."""
    from alignkit.errors import AlignkitError

    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn: a socket in TIME_WAIT is no obstacle
        sock.bind((host, port))
        sock.listen(2048)
    except socket.gaierror as e:
        sock.close()
        raise AlignkitError(f"--host {host}: cannot resolve this host name ({e.strerror})") from None
    except OSError as e:
        sock.close()
        if e.errno == errno.EADDRINUSE:
            raise AlignkitError(f"port {port} on {host} is already in use (another `alignkit label serve`?); "
                                "stop that program or choose another --port") from None
        if e.errno == errno.EACCES:
            raise AlignkitError(f"cannot listen on {where}: permission denied (ports below 1024 need privileges); "
                                "choose another --port") from None
        if e.errno == errno.EADDRNOTAVAIL:
            raise AlignkitError(f"cannot listen on {where}: {host} is not an address of this machine") from None
        raise AlignkitError(f"cannot listen on {where}: {e.strerror or e}") from None
    return sock


def _loopback(sock: socket.socket) -> bool:
    return ipaddress.ip_address(sock.getsockname()[0]).is_loopback


def _serve(args) -> int:
    import uvicorn

    from alignkit.label.app import create_app
    from alignkit.label.db import open_db

    sock = _listen(args.host, args.port)
    try:
        engine = open_db(args.db)
        try:
            app = create_app(engine, timeout_s=args.task_timeout, max_request_bytes=args.max_request_bytes,
                             secure_cookies=args.secure_cookies, base_url=args.url)
            if not _loopback(sock) and not args.secure_cookies:
                print(f"alignkit label serve: warning: --host {args.host} is reachable from other machines and "
                      "this app speaks plain HTTP: sign-in tokens, links and cookies cross the network in clear. "
                      "Put it behind an HTTPS proxy and pass --secure-cookies, or keep --host 127.0.0.1",
                      file=sys.stderr, flush=True)
            host, port = sock.getsockname()[:2]
            address = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
            links = (f"invite links: {args.url}/login?token=..." if args.url else
                     "no --url: invites on the admin page give tokens, not links")
            print(f"labeling app on {address} (annotators: the links from `alignkit label invite`; admin page: "
                  f"/admin; {links})", flush=True)
            # no access log: sign-in links carry the token in their query string
            config = uvicorn.Config(app, log_level="warning", access_log=False)
            uvicorn.Server(config).run(sockets=[sock])
        finally:
            engine.dispose()
    finally:
        sock.close()
    return 0


def _status_text(s: dict) -> str:
    a, t = s["agreement"], s["thumbs_agreement"]

    def num(x, fmt=".3f"):
        return "n/a" if x is None else format(x, fmt)

    lines = [
        f"items: {s['items']} ({s['pair_items']} pairs, {s['ranking_items']} rankings, {s['thumbs_items']} thumbs, "
        f"{s['gold_items']} gold); "
        f"complete: {s['complete_items']}; without votes: {s['items_without_votes']}",
        f"votes: {s['votes']}; skips: {s['skips']}; open tasks: {s['open_tasks']}",
        f"agreement on {a['items']} pair items with 2+ votes: pairwise {num(a['pairwise_agreement'])}, "
        f"Fleiss' kappa {num(a['fleiss_kappa'])}",
        *([f"agreement on {t['items']} thumbs items with 2+ votes: pairwise {num(t['pairwise_agreement'])}, "
           f"Fleiss' kappa {num(t['fleiss_kappa'])}"] if s["thumbs_items"] else []),
        f"{'annotator':<24}{'votes':>7}{'skipped':>9}{'open':>6}{'gold votes':>12}{'gold score':>12}",
    ]
    for p in s["annotators"]:
        name = p["name"] + (" (admin)" if p["admin"] else "")
        lines.append(f"{name:<24}{p['votes']:>7}{p['skipped']:>9}{p['open']:>6}{p['gold_votes']:>12}"
                     f"{num(p['gold_score'], '.2f'):>12}")
    return "\n".join(lines)
