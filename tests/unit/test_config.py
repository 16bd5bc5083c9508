from pathlib import Path

import pytest

from tumorlens.config import Destination, load_settings, settings_environ
from tumorlens.errors import ConfigurationError


def test_defaults() -> None:
    s = load_settings(environ={})
    assert s.ae_title == "TUMORLENS"
    assert s.dicom_port == 11112
    assert s.stable_age == 30.0
    assert s.redis_url == ""
    assert s.grpc_address == "127.0.0.1:50051"
    assert (s.models_dir / "__init__.py").exists()


def test_file_then_environment_precedence(tmp_path: Path) -> None:
    config = tmp_path / "tumorlens.toml"
    config.write_text(
        '[tumorlens]\nae_title = "FROMFILE"\ndicom_port = 104\nstable_age = 5\n'
        'allowed_calling_aets = ["ORTHANC", "PACS"]\n'
        'destinations = [{ae_title = "PACS", host = "10.0.0.5", port = 104}]\n'
    )
    s = load_settings(config, environ={"TUMORLENS_DICOM_PORT": "4242"})
    assert s.ae_title == "FROMFILE"
    assert s.dicom_port == 4242  # environment wins over the file
    assert s.stable_age == 5.0
    assert s.allowed_calling_aets == ("ORTHANC", "PACS")
    assert s.destinations == (Destination("PACS", "10.0.0.5", 104),)
    # flags (overrides) win over both
    assert load_settings(config, environ={}, dicom_port=11113).dicom_port == 11113


def test_environment_lists_and_destinations() -> None:
    s = load_settings(
        environ={
            "TUMORLENS_ALLOWED_CALLING_AETS": "A, B",
            "TUMORLENS_DESTINATIONS": "PACS@pacs.local:104,VIEW@10.1.1.1:11112",
            "TUMORLENS_DATA_DIR": "/tmp/x",
        }
    )
    assert s.allowed_calling_aets == ("A", "B")
    assert [str(d) for d in s.destinations] == ["PACS@pacs.local:104", "VIEW@10.1.1.1:11112"]
    assert s.spool_dir == Path("/tmp/x/spool")


def test_round_trip_through_environment() -> None:
    s = load_settings(environ={"TUMORLENS_DESTINATIONS": "P@h:1", "TUMORLENS_STABLE_AGE": "3"})
    assert load_settings(environ=settings_environ(s)) == s


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"TUMORLENS_DICOM_PORT": "eleven"}, "dicom_port"),
        ({"TUMORLENS_AE_TITLE": "X" * 17}, "ae_title"),
        ({"TUMORLENS_DESTINATIONS": "nohost"}, "AE@host:port"),
        ({"TUMORLENS_STABLE_AGE": "-1"}, "stable_age"),
        ({"TUMORLENS_TLS_CERT": "/a.pem"}, "tls_key"),
    ],
)
def test_bad_values_are_named(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        load_settings(environ=env)


def test_unknown_key_in_file(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text("ae_titel = 'TYPO'\n")
    with pytest.raises(ConfigurationError, match="unknown setting 'ae_titel'"):
        load_settings(config, environ={})


def test_series_rules_from_file_and_through_the_environment(tmp_path: Path) -> None:
    config = tmp_path / "rules.toml"
    config.write_text(
        "[[tumorlens.series_rules]]\n"
        'sequence = "flair"\n'
        'match = { SeriesDescription = "(?i)dark.?fluid" }\n'
        "priority = 10\n"
    )
    s = load_settings(config, environ={})
    assert len(s.series_rules) == 1
    assert s.series_rules[0].sequence == "flair"
    assert load_settings(environ=settings_environ(s)).series_rules == s.series_rules


def test_bad_series_rule_is_named(tmp_path: Path) -> None:
    config = tmp_path / "rules.toml"
    config.write_text('[[tumorlens.series_rules]]\nsequence = "flair"\nmatch = { Foo = "(" }\n')
    with pytest.raises(ConfigurationError, match="series rule #1"):
        load_settings(config, environ={})
