"""`python -m eventic dashboard --database-url URL [--port 8080] [--host 127.0.0.1] [--read-only]`:
a web UI of eventic's queues, jobs, workflows and record histories, connected as the role of
the URL (it shows what that role may see and does what that role may do)."""

import argparse
import os


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m eventic dashboard", description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", default=os.environ.get("DATABASE_URL"),
                        help="libpq URL or conninfo of the database (default: $DATABASE_URL)")
    parser.add_argument("--port", type=int, default=8080, help="HTTP port (default 8080)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1; the dashboard has no login "
                             "of its own: expose it only behind one)")
    parser.add_argument("--read-only", action="store_true",
                        help="hide the action buttons and refuse every action")
    args = parser.parse_args(argv)
    if not args.database_url:
        parser.error("--database-url (or DATABASE_URL) is required")

    import uvicorn

    from .app import create_app

    loopback = args.host in ("127.0.0.1", "localhost", "::1")
    app = create_app(args.database_url, read_only=args.read_only,
                     allowed_hosts=["127.0.0.1", "localhost"] if loopback else None)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


__all__ = ["main"]
