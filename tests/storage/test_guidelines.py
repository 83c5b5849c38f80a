"""Guidelines (storage/guidelines.py) on SQLite and PostgreSQL: versions kept, and each label made
under the version in force, read by the label's own insert."""

from __future__ import annotations

import pytest

from storage import guidelines, queue
from storage.db import transaction
from storage.models import Label
from tests.factories import make_pairs, make_user


def _label(engine, user_id) -> Label:
    with transaction(engine) as session:
        claim = queue.claim_next_pair(session=session, user_id=user_id, lease_seconds=60)
        return queue.submit_label(
            session=session, user_id=user_id, pair_id=claim.pair_id, shown_choice="left"
        )


def test_versions_are_kept_and_each_label_records_the_one_in_force(engine):
    with transaction(engine) as session:
        ann = make_user(session).id
        make_pairs(session, 4)
        assert guidelines.current(session=session) is None
    before = _label(engine, ann)
    with transaction(engine) as session:
        first = guidelines.publish(session=session, text="# Rules\nPrefer *polite*.", user_id=ann)
    under_first = _label(engine, ann)
    with transaction(engine) as session:
        assert guidelines.publish(session=session, text="Rules v2", user_id=None).version == 2
        assert guidelines.current(session=session) == (2, "Rules v2")
        assert guidelines.get_version(session=session, version=1) == "# Rules\nPrefer *polite*."
        assert [v for v, _, _ in guidelines.history(session=session)] == [2, 1]
    under_second = _label(engine, ann)
    assert first.version == 1
    assert (before.guideline_version, under_first.guideline_version) == (None, 1)
    assert under_second.guideline_version == 2
    with transaction(engine, readonly=True) as session:
        stored = {
            label.id: label.guideline_version for label in session.exec(Label.__table__.select())
        }
    assert stored == {before.id: None, under_first.id: 1, under_second.id: 2}


@pytest.mark.parametrize(
    "text, message",
    [("  \n", "empty"), ("x" * 100_001, "at most"), ("a\x00b", "NUL"), ("Rules", "the same")],
)
def test_bad_guidelines_are_refused(engine, text, message):
    with transaction(engine) as session:
        guidelines.publish(session=session, text="Rules", user_id=None)
        with pytest.raises(ValueError, match=message):
            guidelines.publish(session=session, text=text, user_id=None)
