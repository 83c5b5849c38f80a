from __future__ import annotations

import pytest

from storage.settings import SettingsError, from_snapshot, load_settings, with_overrides


def test_layers_file_then_environment_then_flags(tmp_path, monkeypatch):
    (tmp_path / "prefloop.toml").write_text(
        "[dpo]\nbeta = 0.3\nlearning_rate = 1e-4\n[generation]\nn_samples = 4\n"
    )
    assert load_settings(tmp_path).dpo.beta == 0.3
    monkeypatch.setenv("PREFLOOP_DPO__BETA", "0.5")
    settings = load_settings(tmp_path)
    assert (settings.dpo.beta, settings.dpo.learning_rate) == (0.5, 1e-4)
    settings = load_settings(tmp_path, dpo={"beta": 0.7})
    assert (settings.dpo.beta, settings.generation.n_samples) == (0.7, 4)


def test_defaults_without_a_file(tmp_path):
    settings = load_settings(tmp_path)
    assert settings.generation.temperatures == [1.0, 0.7]
    assert settings.resolved_database_url.endswith("prefloop.db")


def test_invalid_value_names_the_key(tmp_path):
    (tmp_path / "prefloop.toml").write_text("[dpo]\nbeta = -1\n")
    with pytest.raises(SettingsError, match=r"dpo\.beta"):
        load_settings(tmp_path)


def test_unknown_key_is_refused(tmp_path):
    (tmp_path / "prefloop.toml").write_text("[routing]\ntua = 0.2\n")
    with pytest.raises(SettingsError, match=r"routing\.tua"):
        load_settings(tmp_path)


def test_bad_toml_names_the_file_and_line(tmp_path):
    (tmp_path / "prefloop.toml").write_text("[dpo]\nbeta = 0.2\n[generation\n")
    with pytest.raises(SettingsError, match=r"prefloop\.toml: not valid TOML: .*line 3"):
        load_settings(tmp_path)


def test_toml_not_utf8_names_the_file(tmp_path):
    (tmp_path / "prefloop.toml").write_bytes('[eval]\njudge = "caf\u00e9:x"\n'.encode("latin-1"))
    with pytest.raises(SettingsError, match=r"prefloop\.toml: not UTF-8"):
        load_settings(tmp_path)


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        (
            "PREFLOOP_GENERATION__TEMPERATURES",
            "1.0,0.7",
            r"PREFLOOP_GENERATION__TEMPERATURES \(generation\.temperatures\): not valid JSON "
            r"\(a list is written \[1\.0, 0\.7\]",
        ),
        ("PREFLOOP_DPO__TRL_ARGS", '{"hub_token": "hf_s3cret"', r"\(dpo\.trl_args\): not valid"),
        ("PREFLOOP_ROUTING", "enabled=true", r"PREFLOOP_ROUTING \(routing\): not valid JSON"),
        ("prefloop_generation__temperatures", "[1.0,", r"prefloop_generation__temperatures"),
    ],
)
def test_environment_value_that_is_not_json_names_the_variable(
    tmp_path, monkeypatch, name, value, message
):
    monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError, match=message) as raised:
        load_settings(tmp_path)
    assert "s3cret" not in str(raised.value)  # the message shows where, not the value


def test_environment_json_list_is_validated(tmp_path, monkeypatch):
    monkeypatch.setenv("PREFLOOP_GENERATION__TEMPERATURES", "[1.0, 0.0]")
    with pytest.raises(SettingsError, match=r"generation\.temperatures: .*> 0"):
        load_settings(tmp_path)
    monkeypatch.setenv("PREFLOOP_GENERATION__TEMPERATURES", "[1.2, 0.5]")
    assert load_settings(tmp_path).generation.temperatures == [1.2, 0.5]


def test_overrides_are_validated(tmp_path):
    settings = load_settings(tmp_path)
    assert with_overrides(settings, {"routing.tau": 0.2}).routing.tau == 0.2
    with pytest.raises(SettingsError, match=r"routing\.tau"):
        with_overrides(settings, {"routing.tau": 0.9})
    with pytest.raises(SettingsError, match="unknown setting"):
        with_overrides(settings, {"routing.nope": 1})


def test_criteria_are_named_once_each_and_dpo_trains_on_one_of_them(tmp_path):
    from storage.settings import SettingsError, load_settings, with_overrides

    settings = load_settings(tmp_path)
    judged = with_overrides(
        settings, {"labeling.criteria": ["helpfulness", "harm_2"], "dpo.criterion": "harm_2"}
    )
    assert judged.dpo.criterion == "harm_2"
    for overrides, message in (
        ({"labeling.criteria": ["Helpfulness"]}, "labeling.criteria: Value error, criterion"),
        ({"labeling.criteria": ["a", "a"]}, "the same criterion twice"),
        ({"labeling.criteria": [f"c{i}" for i in range(9)]}, "labeling.criteria"),
        ({"dpo.criterion": "helpfulness"}, "dpo.criterion 'helpfulness' is not among"),
    ):
        with pytest.raises(SettingsError, match=message):
            with_overrides(settings, overrides)


def test_a_job_queued_before_an_upgrade_runs_on_its_settings(tmp_path):
    """A job stores the settings it was queued with; a setting removed since (routing.recheck,
    say) is dropped from that snapshot and named, while a user's file naming it is refused."""
    from training.dpo_job import job_settings

    snapshot = load_settings(tmp_path, dpo={"beta": 0.3}).model_dump(mode="json")
    snapshot["routing"]["recheck"] = False
    snapshot["retired_section"] = {"x": 1}
    settings, dropped = from_snapshot({**snapshot, "data_dir": tmp_path})
    assert dropped == ["routing.recheck", "retired_section"]
    assert settings.dpo.beta == 0.3
    assert job_settings({"settings": snapshot}, tmp_path).dpo.beta == 0.3
    (tmp_path / "prefloop.toml").write_text("[routing]\nrecheck = false\n")
    with pytest.raises(SettingsError, match="routing.recheck"):
        load_settings(tmp_path)


def test_label_smoothing_is_refused_with_a_loss_that_ignores_it(tmp_path):
    """TRL's sigmoid DPO loss has no label-smoothing term: a setting that would change nothing is
    refused, naming the losses that read it; with one of them it is taken."""
    (tmp_path / "prefloop.toml").write_text("[dpo]\nlabel_smoothing = 0.2\n")
    with pytest.raises(SettingsError, match=r"dpo\.label_smoothing: .*'sigmoid'.*\"robust\""):
        load_settings(tmp_path)
    (tmp_path / "prefloop.toml").write_text('[dpo]\nlabel_smoothing = 0.2\nloss_type = "robust"\n')
    assert load_settings(tmp_path).dpo.label_smoothing == 0.2


def test_retraining_pi_0_every_round_needs_every_rounds_pairs(tmp_path):
    """`loop.start = 'sft'` on the latest round's pairs alone would throw the earlier rounds
    away: refused, naming both keys; with data_scope 'all' it is taken."""
    (tmp_path / "prefloop.toml").write_text('[loop]\nstart = "sft"\ndata_scope = "latest"\n')
    with pytest.raises(SettingsError, match=r"loop\.start = 'sft'.*data_scope = 'latest'"):
        load_settings(tmp_path)
    (tmp_path / "prefloop.toml").write_text('[loop]\nstart = "sft"\ndata_scope = "all"\n')
    assert load_settings(tmp_path).loop.start == "sft"


def test_an_unknown_dpo_loss_is_refused_at_load_not_at_the_first_step(tmp_path):
    (tmp_path / "prefloop.toml").write_text('[dpo]\nloss_type = "sigmod"\n')
    with pytest.raises(SettingsError, match=r"dpo\.loss_type: .*'sigmod' is no DPO loss.*ipo"):
        load_settings(tmp_path)


def test_the_dpo_losses_are_trls():
    """The losses the settings accept are those TRL's installed DPOConfig names (an upgrade of the
    lock that adds or drops one fails here, not at a round's first step)."""
    import re

    from trl import DPOConfig

    from storage.settings import DPO_LOSSES

    help_text = DPOConfig.__dataclass_fields__["loss_type"].metadata["help"]
    assert set(re.findall(r"`'(\w+)'`", help_text)) == set(DPO_LOSSES)
