"""The FastAPI one-liner: REST resources per Record class, If-Match, 422, OpenAPI."""

import pytest
from fastapi.testclient import TestClient

from eventic import Eventic, Record


@pytest.fixture()
def app(db_url):
    app = Eventic.create_app("api-test", db_url=db_url)
    yield app
    Eventic.close()


class Article(Record):
    title: str
    words: int = 0


def test_crud_versions_history_diff(app, sql):
    with TestClient(app) as client:
        created = client.post("/article", json={"title": "Hare"})
        assert created.status_code == 201 and created.headers["etag"] == '"0"'
        body = created.json()
        rid = body["id"]
        assert body["version"] == 0 and body["title"] == "Hare"
        changed = client.patch(f"/article/{rid}", json={"words": 3}, headers={"If-Match": '"0"'})
        assert changed.status_code == 200 and changed.json()["version"] == 1
        assert client.patch(f"/article/{rid}", json={"words": 4}, headers={"If-Match": "0"}).status_code == 412
        assert client.patch(f"/article/{rid}", json={"title": "Tortoise", "words": 4}).json()["version"] == 2
        assert client.get(f"/article/{rid}", params={"version": 0}).json()["title"] == "Hare"
        history = client.get(f"/article/{rid}/history").json()
        assert [h["version"] for h in history] == [0, 1, 2]
        assert history[2]["changed_fields"] == ["title", "words"]
        assert client.get(f"/article/{rid}/diff", params={"from": 1, "to": 2}).json() == {
            "title": {"old": "Hare", "new": "Tortoise"}, "words": {"old": 3, "new": 4}}
        as_of = history[1]["created_at"]
        assert client.get(f"/article/{rid}", params={"as_of": as_of}).json()["version"] == 1
        assert client.delete(f"/article/{rid}").json() == {"id": rid, "version": 3, "deleted": True}
        assert client.get(f"/article/{rid}").status_code == 404
    assert sql.execute("SELECT count(*) FROM eventic.history(%s)", (rid,)).fetchone() == (4,)


def test_schema_violations_are_422(app, sql):
    with TestClient(app) as client:
        rid = client.post("/article", json={"title": "x"}).json()["id"]
        assert client.post("/article", json={"words": 1}).status_code == 422  # title is required
        assert client.patch(f"/article/{rid}", json={"words": "many"}).status_code == 422
        assert client.patch(f"/article/{rid}", json={"title": None}).status_code == 422  # Pydantic: str
        sql.execute("""SELECT eventic.register_class('Article', '{"type": "object", "properties":
                       {"words": {"type": "integer", "maximum": 10}}}')""")
        refused = client.patch(f"/article/{rid}", json={"words": 11})
        assert refused.status_code == 422 and "maximum" in refused.json()["detail"]["detail"]
        assert client.get(f"/article/{rid}").json()["version"] == 0


def test_openapi_shows_the_models(app):
    with TestClient(app) as client:
        spec = client.get("/openapi.json").json()
    schemas = spec["components"]["schemas"]
    assert {"Article", "ArticleCreate", "ArticlePatch", "HistoryEntry", "WorkflowInfo"} <= set(schemas)
    assert schemas["ArticleCreate"]["required"] == ["title"]
    assert {"/article", "/article/{record_id}", "/article/{record_id}/history", "/article/{record_id}/diff",
            "/workflows/{workflow_id}"} <= set(spec["paths"])
    assert spec["paths"]["/article/{record_id}"]["patch"]["responses"].keys() >= {"200", "412", "422"}


def test_classes_defined_after_create_app_get_routes(app):
    class LateComer(Record):
        name: str

    with TestClient(app) as client:
        assert client.post("/late_comer", json={"name": "x"}).status_code == 201
        assert client.get("/workflows/no-such-workflow").status_code == 404
