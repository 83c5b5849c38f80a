"""The migrations build, from an empty database, exactly the schema the models declare."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlmodel import SQLModel

from storage.db import current_revision, make_engine, upgrade


def test_migrations_from_empty_match_the_models(engine):
    with engine.connect() as connection:
        diff = compare_metadata(MigrationContext.configure(connection), SQLModel.metadata)
    assert diff == []
    assert current_revision(engine) is not None


def test_upgrade_twice_is_a_no_op(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    assert current_revision(engine) is None
    upgrade(engine)
    first = current_revision(engine)
    upgrade(engine)
    assert current_revision(engine) == first


def test_a_database_of_the_first_release_upgrades_in_place_with_its_data(tmp_path, database):
    """A data directory made by the first release (schema 0001, with users, a policy, an
    iteration, a labeled and a queued pair, a job), upgraded by `prefloop db upgrade`: every
    row is still there and the queue works on it."""
    from datetime import UTC, datetime

    from typer.testing import CliRunner

    from app.cli import cli
    from storage import crud, queue
    from storage.db import head_revision, transaction
    from storage.runtime import open_runtime

    rt = open_runtime(tmp_path)
    upgrade(rt.engine, "0001")
    old = sa.MetaData()
    old.reflect(rt.engine)
    t = old.tables
    now = datetime(2026, 10, 1, tzinfo=UTC)
    with rt.engine.begin() as c:

        def add(table: str, **values) -> int:
            return c.execute(t[table].insert().values(**values)).inserted_primary_key[0]

        user = add(
            "user", name="ann", role="annotator", password_hash="h", active=True, created_at=now
        )
        prompt = add(
            "prompt",
            text="Hi?",
            content_hash="0" * 64,
            source="old",
            split="train",
            active=True,
            created_at=now,
        )
        policy = add(
            "policy",
            version=0,
            path="/models/p0",
            status="deployed",
            metrics={"eval": 1},
            config={},
            created_at=now,
        )
        iteration = add(
            "iteration",
            k=0,
            state="labeling",
            policy_in_id=policy,
            human_quota=2,
            human_budget=0,
            metrics={},
            created_at=now,
        )
        texts = ["one", "two", "three", "four"]
        responses = [
            add(
                "response",
                prompt_id=prompt,
                policy_id=policy,
                iteration_id=iteration,
                text=x,
                sampling={"temperature": 1.0},
                created_at=now,
            )
            for x in texts
        ]
        pairs = [
            add(
                "pair",
                prompt_id=prompt,
                response_a_id=a,
                response_b_id=b,
                iteration_id=iteration,
                strategy="max_min",
                route="human",
                status=status,
                overlap=1,
                n_labels=n,
                created_at=now,
            )
            for (a, b), status, n in (
                ((responses[0], responses[1]), "done", 1),
                ((responses[2], responses[3]), "queued", 0),
            )
        ]
        add(
            "label",
            pair_id=pairs[0],
            user_id=user,
            source="human",
            choice="a",
            swapped=False,
            created_at=now,
        )
        add(
            "job",
            kind="train",
            status="failed",
            iteration_id=iteration,
            progress=0.5,
            attempts=1,
            params={},
            result={},
            error="killed",
            created_at=now,
        )
    rt.engine.dispose()

    result = CliRunner().invoke(cli, ["db", "upgrade", "--data-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert current_revision(rt.engine) == head_revision()
    with transaction(rt.engine) as session:
        assert crud.get_user_by_name(session=session, name="ann").id == user
        assert crud.deployed_policy(session=session).path == "/models/p0"
        assert crud.current_iteration(session=session).human_quota == 2
        claim = queue.claim_next_pair(session=session, user_id=user, lease_seconds=60)
        assert claim is not None and claim.pair_id == pairs[1]
        queue.submit_label(session=session, user_id=user, pair_id=pairs[1], shown_choice="tie")
    with rt.engine.connect() as c:
        labels = c.execute(sa.text("SELECT pair_id, choice FROM label ORDER BY id")).all()
        job = c.execute(sa.text("SELECT status, error, error_kind FROM job")).one()
    assert [tuple(row) for row in labels] == [(pairs[0], "a"), (pairs[1], "tie")]
    assert tuple(job) == ("failed", "killed", None)


def test_evaluation_pairs_migrate_down_and_up_without_touching_other_rows(engine):
    """0005 adds the route and strategy 'eval' (SQLite rebuilds the pair table, which labels,
    leases and suggestions reference); its downgrade removes the evaluation pairs and their
    votes, and leaves every other row."""
    from alembic import command

    from storage.db import migrations_config, transaction
    from storage.models import Choice, Label, LabelSource, PairStrategy, Route
    from tests.factories import make_pairs, make_user

    with transaction(engine) as session:
        user = make_user(session)
        kept = make_pairs(session, 2)
        gone = make_pairs(session, 1, route=Route.eval, strategy=PairStrategy.eval)
        for pair in kept + gone:
            session.add(
                Label(pair_id=pair.id, user_id=user.id, source=LabelSource.human, choice=Choice.a)
            )

    def count(table):
        with engine.connect() as connection:
            return connection.exec_driver_sql(f'SELECT count(*) FROM "{table}"').scalar_one()

    assert (count("pair"), count("label"), count("response")) == (3, 3, 6)
    command.downgrade(migrations_config(engine), "0004")
    assert current_revision(engine) == "0004"
    assert (count("pair"), count("label"), count("response")) == (2, 2, 4)
    upgrade(engine)
    test_migrations_from_empty_match_the_models(engine)
    with transaction(engine) as session:  # the route is allowed again, the labels still there
        make_pairs(session, 1, route=Route.eval, strategy=PairStrategy.eval)
    assert (count("pair"), count("label")) == (3, 2)


def test_gold_pairs_migrate_down_and_up_with_marked_pairs_put_back(engine):
    """0006 adds the gold route, table and user.gold_since; its downgrade gives a marked pair
    its route, status and overlap back, removes the imported gold pairs with their labels, and
    leaves every other row."""
    from alembic import command

    from storage import gold
    from storage.crud import PromptIn
    from storage.db import migrations_config, transaction
    from storage.models import Choice, Label, LabelSource
    from tests.factories import make_pairs, make_user

    with transaction(engine) as session:
        user = make_user(session)
        kept, marked = make_pairs(session, 2, overlap=3)
        gold.add_gold_pairs(
            session=session, items=[gold.GoldIn(PromptIn("gold?"), "yes", "no", Choice.a)]
        )
        gold.mark_gold(session=session, pair_id=marked.id, answer="b", user_id=user.id)
        for pair_id in (kept.id, marked.id, max(gold.gold_answers(session=session))):
            session.add(
                Label(pair_id=pair_id, user_id=user.id, source=LabelSource.human, choice=Choice.a)
            )

    def rows(query):
        with engine.connect() as connection:
            return [tuple(row) for row in connection.exec_driver_sql(query)]

    assert rows("SELECT count(*) FROM pair") == [(3,)]
    command.downgrade(migrations_config(engine), "0005")
    assert current_revision(engine) == "0005"
    assert rows("SELECT id, route, status, overlap FROM pair ORDER BY id") == [
        (kept.id, "human", "queued", 3),
        (marked.id, "human", "queued", 3),
    ]
    assert rows("SELECT count(*) FROM label") == [(2,)]
    assert rows("SELECT count(*) FROM response") == [(4,)]
    upgrade(engine)
    test_migrations_from_empty_match_the_models(engine)


def test_review_labels_migrate_down_and_up(engine):
    """0007 allows label.source 'review' (SQLite rebuilds the label table); its downgrade drops
    the decisions and keeps every other label."""
    from alembic import command

    from storage import review
    from storage.db import migrations_config, transaction
    from storage.models import Choice, Label, LabelSource, Role
    from tests.factories import make_pairs, make_user

    with transaction(engine) as session:
        ann, boss = make_user(session), make_user(session, role=Role.admin)
        (pair,) = make_pairs(session, 1)
        session.add(
            Label(pair_id=pair.id, user_id=ann.id, source=LabelSource.human, choice=Choice.a)
        )
        session.add(Label(pair_id=pair.id, source=LabelSource.proxy, choice=Choice.b))
        session.flush()
        review.settle(session=session, pair_id=pair.id, choice="b", user_id=boss.id)

    def sources():
        with engine.connect() as connection:
            return sorted(r[0] for r in connection.exec_driver_sql("SELECT source FROM label"))

    assert sources() == ["human", "proxy", "review"]
    command.downgrade(migrations_config(engine), "0006")
    assert sources() == ["human", "proxy"]
    upgrade(engine)
    test_migrations_from_empty_match_the_models(engine)
    with pytest.raises(sa.exc.IntegrityError), transaction(engine) as session:
        # the partial unique index is back: one proxy label per pair
        session.add(Label(pair_id=pair.id, source=LabelSource.proxy, choice=Choice.a))


def test_guidelines_migrate_down_and_up(engine):
    """0008 adds the guideline table and label.guideline_version; its downgrade drops both and
    keeps the labels, the partial unique index of machine labels intact."""
    from alembic import command

    from storage import guidelines
    from storage.db import migrations_config, transaction
    from storage.models import Choice, Label, LabelSource
    from tests.factories import make_pairs

    with transaction(engine) as session:
        guidelines.publish(session=session, text="Rules", user_id=None)
        (pair,) = make_pairs(session, 1)
        session.add(Label(pair_id=pair.id, source=LabelSource.proxy, choice=Choice.b))
    command.downgrade(migrations_config(engine), "0007")
    with engine.connect() as connection:
        assert connection.exec_driver_sql("SELECT count(*) FROM label").scalar_one() == 1
    with pytest.raises(sa.exc.IntegrityError), engine.begin() as connection:
        connection.exec_driver_sql(
            f"INSERT INTO label (pair_id, source, choice, swapped, created_at) "
            f"VALUES ({pair.id}, 'proxy', 'a', false, '2026-01-01 00:00:00')"
        )
    upgrade(engine)
    test_migrations_from_empty_match_the_models(engine)


def test_label_criteria_migrate_down_and_up(engine):
    """0009 adds label.criteria; its downgrade drops the column and keeps the labels."""
    from alembic import command

    from storage.db import migrations_config, transaction
    from storage.models import Choice, Label, LabelSource
    from tests.factories import make_pairs

    with transaction(engine) as session:
        (pair,) = make_pairs(session, 1)
        session.add(
            Label(pair_id=pair.id, source=LabelSource.proxy, choice=Choice.b, criteria={"x": "a"})
        )
    command.downgrade(migrations_config(engine), "0008")
    with engine.connect() as connection:
        assert connection.exec_driver_sql("SELECT choice FROM label").scalar_one() == "b"
    upgrade(engine)
    test_migrations_from_empty_match_the_models(engine)


def test_rewrites_migrate_down_and_up(engine):
    """0010 adds the strategy 'edit' (SQLite rebuilds the pair table) and response.edited_from_id;
    its downgrade removes the rewrites and leaves every other row."""
    from alembic import command

    from storage import rewrites
    from storage.db import migrations_config, transaction
    from tests.factories import make_pairs, make_user

    with transaction(engine) as session:
        ann = make_user(session)
        (pair,) = make_pairs(session, 1)
        rewrites.add_rewrite(session=session, pair_id=pair.id, user_id=ann.id, side="a", text="new")

    def count(table):
        with engine.connect() as connection:
            return connection.exec_driver_sql(f"SELECT count(*) FROM {table}").scalar_one()

    assert (count("pair"), count("response"), count("label")) == (2, 3, 1)
    command.downgrade(migrations_config(engine), "0009")
    assert (count("pair"), count("response"), count("label")) == (1, 2, 0)
    upgrade(engine)
    test_migrations_from_empty_match_the_models(engine)


def test_user_live_leases_index_migrates_down_and_up(engine):
    """0012 adds ix_assignment_user_live (a user's live leases: the claim's expiry of their
    lapsed ones reads it, not every claim they ever made); down removes it, up puts it back."""
    from alembic import command

    from storage.db import migrations_config

    def indexes() -> set[str]:
        return {ix["name"] for ix in sa.inspect(engine).get_indexes("assignment")}

    assert "ix_assignment_user_live" in indexes()
    command.downgrade(migrations_config(engine), "0011")
    assert "ix_assignment_user_live" not in indexes()
    assert "ix_assignment_live" in indexes()
    upgrade(engine)
    test_migrations_from_empty_match_the_models(engine)
