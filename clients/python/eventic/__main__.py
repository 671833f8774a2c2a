"""`python -m eventic <command>`: worker (run Python jobs and workflows), dashboard (web UI)."""

import importlib
import sys

COMMANDS = {
    "worker": "eventic.worker_cli",
    "dashboard": "eventic.dashboard",
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS:
        print("usage: python -m eventic {" + ",".join(COMMANDS) + "} [options]  (--help for each)",
              file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[argv[0]])
    return int(module.main(argv[1:]) or 0)


if __name__ == "__main__":
    sys.exit(main())
