"""The admin view's settings form: every editable key shows its value in its widget and reads
back as the same setting, lists of names and unset optional keys included."""

from __future__ import annotations

import pytest

from app.ui.admin_settings import FIELDS, _current, parse, to_widget
from storage.settings import Settings, with_overrides

CRITERIA = {
    "labeling.criteria": ["helpfulness", "harmlessness"],
    "dpo.criterion": "harmlessness",
    "loop.interval_minutes": 30.0,
}


@pytest.mark.parametrize("overrides", [{}, CRITERIA], ids=["defaults", "criteria"])
def test_every_field_reads_back_as_the_setting_it_shows(tmp_path, overrides):
    settings = with_overrides(Settings(data_dir=tmp_path), overrides)
    for field in FIELDS:
        value = _current(settings, field.key)
        assert parse(field, to_widget(field, value)) == value, field.key
    kinds = {f.key: f.kind for f in FIELDS}
    assert kinds["labeling.criteria"] == "text_list"
    assert kinds["dpo.criterion"] == "optional_text"


def test_an_emptied_box_unsets_an_optional_key_and_lists_are_split_on_commas():
    fields = {f.key: f for f in FIELDS}
    assert parse(fields["dpo.criterion"], "  ") is None
    assert parse(fields["loop.interval_minutes"], "") is None
    assert parse(fields["labeling.criteria"], " helpfulness,, harmlessness ") == [
        "helpfulness",
        "harmlessness",
    ]
    assert parse(fields["labeling.criteria"], "") == []
    with pytest.raises(ValueError, match="generation.temperatures"):
        parse(fields["generation.temperatures"], "1.0, warm")
