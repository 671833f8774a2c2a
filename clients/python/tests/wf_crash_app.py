"""The workflow of test_workflows' crash test, imported by the worker processes it kills
(`python -m eventic worker --app wf_crash_app`): ten @transaction steps, each an INSERT into
crash_effects, with a pause between them (a @step) so the process dies mid-workflow."""

import time

from eventic import Eventic


@Eventic.transaction(name="crash.effect")
def effect(workflow: str, n: int) -> int:
    with Eventic.connection() as conn:
        conn.execute("INSERT INTO crash_effects VALUES (%s, %s)", (workflow, n))
        conn.execute("SELECT pg_sleep(0.02)")  # the process may die inside the transaction
    return n


@Eventic.step(name="crash.pause")
def pause() -> None:
    time.sleep(0.05)


@Eventic.workflow(name="crash.flow")
def flow(tag: str) -> dict:
    from eventic import workflows
    total = 0
    for n in range(10):
        total += effect(workflows.workflow_id(), n)
        pause()
    return {"tag": tag, "total": total}
