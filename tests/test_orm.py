"""An ORM maps a class view like a table: SQLAlchemy 2 (over psycopg 3) creates, updates and
deletes through eventic's typed view; every change is a version, the ORM's row-count and
optimistic-version checks work."""

import json
import uuid

import pytest
from sqlalchemy import FetchedValue, create_engine, select, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column
from sqlalchemy.orm.exc import StaleDataError

# Pydantic v2's model_json_schema() for: title: str | None = None; words: int = 0
STORY_SCHEMA = {
    "properties": {
        "title": {"anyOf": [{"type": "string"}, {"type": "null"}], "default": None, "title": "Title"},
        "words": {"default": 0, "minimum": 0, "title": "Words", "type": "integer"},
    },
    "title": "Story",
    "type": "object",
}


class Base(DeclarativeBase):
    pass


class Story(Base):
    __tablename__ = "story"
    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    version: Mapped[int] = mapped_column(server_default=FetchedValue())
    title: Mapped[str | None]
    words: Mapped[int | None]
    properties: Mapped[dict] = mapped_column(JSONB, server_default=FetchedValue())
    # the version column is eventic's: SQLAlchemy sends WHERE version = <known> and reads the
    # new one back, so a stale write fails instead of overwriting
    __mapper_args__ = {"version_id_col": version, "version_id_generator": False, "eager_defaults": True}


@pytest.fixture()
def engine(cluster, db):
    engine = create_engine(
        f"postgresql+psycopg://postgres@/{db}?host={cluster.directory}&port={cluster.port}"
    )
    with engine.begin() as conn:
        conn.execute(
            text("SELECT eventic.register_class('Story', CAST(:schema AS jsonb), 'public')"),
            {"schema": json.dumps(STORY_SCHEMA)},
        )
    yield engine
    engine.dispose()


def test_orm_create_update_delete_become_versions(engine):
    with Session(engine) as session:
        story = Story(title="The Hare", words=3)
        session.add(story)
        session.commit()
        story_id = story.id
        assert story.version == 0
        assert story.properties == {}

        story.title = "The Hare and the Tortoise"
        session.commit()
        assert story.version == 1

        story.words = 12
        session.commit()
        assert story.version == 2

        session.delete(story)
        session.commit()

    with engine.connect() as conn:
        history = conn.execute(
            text("SELECT version, changed_fields, deleted, data FROM eventic.history(:id)"),
            {"id": story_id},
        ).all()
    assert [(h.version, h.changed_fields, h.deleted) for h in history] == [
        (0, ["properties", "title", "words"], False),
        (1, ["title"], False),
        (2, ["words"], False),
        (3, [], True),
    ]
    assert history[2].data == {"title": "The Hare and the Tortoise", "words": 12, "properties": {}}


def test_orm_reads_and_filters_typed_columns(engine):
    with Session(engine) as session:
        session.add_all([Story(title=f"s{i}", words=i) for i in range(5)])
        session.commit()
        long_ones = session.scalars(select(Story).where(Story.words >= 3).order_by(Story.words)).all()
        assert [s.title for s in long_ones] == ["s3", "s4"]


def test_stale_orm_write_is_refused(engine):
    with Session(engine) as first, Session(engine) as second:
        story = Story(title="t", words=1)
        first.add(story)
        first.commit()
        story_id = story.id
        mine = first.get(Story, story_id)
        theirs = second.get(Story, story_id)
        mine.words = 2
        first.commit()
        theirs.words = 99
        with pytest.raises(StaleDataError):
            second.commit()
    with engine.connect() as conn:
        words = conn.execute(
            text("SELECT eventic.hydrate(:id) -> 'words'"), {"id": story_id}
        ).scalar_one()
    assert words == 2


def test_schema_violation_reaches_the_orm_as_an_error(engine):
    from sqlalchemy.exc import IntegrityError

    with Session(engine) as session:
        session.add(Story(title="bad", words=-1))
        with pytest.raises(IntegrityError) as caught:
            session.commit()
    assert caught.value.orig.sqlstate == "23514"
    assert "/words" in caught.value.orig.diag.message_detail
