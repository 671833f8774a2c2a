"""`python -m eventic worker --app MODULE [--app ...] [--queue NAME ...] [--threads N]`

Imports the modules that define your Records, `@Eventic.job()` functions and workflows (a
worker runs only jobs registered in its process), connects (`--database-url` or
$EVENTIC_DATABASE_URL / $DBOS_DATABASE_URL / $DATABASE_URL) and runs the Python workers until
SIGINT/SIGTERM."""

import argparse
import importlib
import logging
import signal
import sys
import threading

from . import db
from .core import Eventic


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m eventic worker", description=__doc__.split("\n\n")[1])
    parser.add_argument("--app", action="append", default=[], metavar="MODULE",
                        help="module to import (defines the jobs, Records and workflows); repeatable")
    parser.add_argument("--queue", action="append", default=[], metavar="NAME",
                        help="queue whose Python jobs to run (default: every queue the modules use)")
    parser.add_argument("--database-url", default=None)
    parser.add_argument("--name", default="eventic-worker")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--lease", type=float, default=30.0, help="lease of a job in seconds (default 30)")
    parser.add_argument("--no-workflows", action="store_true", help="do not run the workflow runner")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    sys.path.insert(0, "")
    for module in args.app:
        importlib.import_module(module)
    if db._state is None:  # the app module may have called Eventic.init / create_app itself
        Eventic.init(args.name, args.database_url)
    workers = Eventic.launch(args.threads, queues=args.queue or None, lease_seconds=args.lease,
                             workflows=not args.no_workflows)
    logging.getLogger("eventic.worker").info("running Python jobs of %s", ", ".join(workers.queues) or "no queue")
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    Eventic.close()
    return 0
