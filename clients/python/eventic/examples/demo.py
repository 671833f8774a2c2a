"""The seed README's FastAPI example, unchanged but for the connection set-up (the URL comes
from $EVENTIC_DATABASE_URL or $DBOS_DATABASE_URL; the package reads both).

`python -m eventic.examples.demo` serves the app on 127.0.0.1 (a free port), calls GET / (the
demo_flow workflow: creates a Story, enqueues draft and snapshot), waits for the jobs, walks
the Story through more versions, prints its history and the final JSON snapshot, and stops.
`python -m eventic.examples.demo --serve` serves on 0.0.0.0:8000 until stopped, as the seed does."""

import os, uuid
from pprint import pprint
from eventic import Record, Eventic

# ── 1. FastAPI + Eventic bootstrap ──────────────────────────────
app = Eventic.create_app("eventic-demo", db_url=os.getenv("DBOS_DATABASE_URL") or os.getenv("EVENTIC_DATABASE_URL"))

# ── 2. Domain model ────────────────────────────────────────────
class Story(Record):
    title: str | None = None
    body: str | None = None

# Auto‑generated queue for heavy jobs
story_q = Eventic.queue(Story._queue_name)

# ── 3. DBOS steps ------------------------------------------------
@Eventic.transaction()
def create_story() -> uuid.UUID:
    return Story().id  # version 0 row

@Eventic.transaction()
def draft(sid: uuid.UUID, text: str):
    Story.hydrate(sid).body = text

@Eventic.step()
def snapshot(sid: uuid.UUID):
    pprint(Story.hydrate(sid).model_dump())

# ── 4. Durable workflow exposed at GET / ────────────────────────
@app.get("/")
@Eventic.workflow()
def demo_flow():
    sid = create_story()
    story_q.enqueue(draft, sid, "Once upon a time …")
    story_q.enqueue(snapshot, sid)
    return {"id": str(sid)}


def run_once() -> dict:
    """Serve the app, call GET /, and walk the story through versions; returns the final
    snapshot (model_dump in JSON mode)."""
    import json, socket, threading, time, urllib.request
    import uvicorn

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        while not server.started:
            time.sleep(0.05)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/") as response:
            sid = uuid.UUID(json.load(response)["id"])
        deadline = time.monotonic() + 60
        while Story.hydrate(sid).body is None:  # the draft job runs in the app's workers
            if time.monotonic() > deadline:
                raise TimeoutError("the draft job did not run within 60 s: are the workers running?")
            time.sleep(0.1)
        story = Story.hydrate(sid)
        story.title = "The Hare and the Tortoise"
        story.set(body="Once upon a time a hare laughed at a tortoise …")
        story.add_property("featured")
        for entry in story.history():
            print(f"version {entry.version}: changed {', '.join(entry.changed_fields) or '-'}")
        final = story.model_dump(mode="json")
        print(json.dumps(final, indent=2, ensure_ascii=False))
        return final
    finally:
        server.should_exit = True
        thread.join(10)


# ── 5. Script entry‑point ───────────────────────────────────────
if __name__ == "__main__":
    import sys
    if "--serve" in sys.argv:
        Eventic.launch()            # run DBOS workers in this process
        import uvicorn
        uvicorn.run(app, host="0.0.0.0", port=8000)
    else:
        run_once()
