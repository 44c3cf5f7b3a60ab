from dataclasses import dataclass
from pathlib import Path

import pytest

from scalelab.config import SettingsError, SystemSettings, setting


@dataclass(frozen=True)
class DemoSettings(SystemSettings):
    system = "objectstore"

    port: int = setting(9000, "S3 port")
    access_key: str | None = setting(None, "first access key", secret=True)
    ratio: float = setting(1.5, "a ratio")
    strict: bool = setting(False, "a flag")


def test_defaults_env_and_overrides_in_that_order() -> None:
    assert DemoSettings.from_env({}).port == 9000
    env = {
        "SCALELAB_DATA": "/srv/x",
        "SCALELAB_OBJECTSTORE_ACCESS_KEY": "AK",
        "SCALELAB_OBJECTSTORE_PORT": "9100",
        "SCALELAB_OBJECTSTORE_STRICT": "yes",
        "SCALELAB_OBJECTSTORE_RATIO": "2.5",
    }
    s = DemoSettings.from_env(env)
    assert (s.data, s.port, s.access_key, s.strict, s.ratio) == (
        Path("/srv/x"),
        9100,
        "AK",
        True,
        2.5,
    )
    assert DemoSettings.from_env(env, port=0, access_key=None).port == 0
    assert DemoSettings.from_env(env, port=None).port == 9100  # None means "not given"


@pytest.mark.parametrize("name,value", [("PORT", "eighty"), ("STRICT", "maybe"), ("RATIO", "x")])
def test_bad_values_name_the_variable(name: str, value: str) -> None:
    with pytest.raises(SettingsError, match=f"SCALELAB_OBJECTSTORE_{name}"):
        DemoSettings.from_env({f"SCALELAB_OBJECTSTORE_{name}": value})


def test_unknown_override_rejected() -> None:
    with pytest.raises(SettingsError):
        DemoSettings.from_env({}, colour="red")


def test_describe_and_public_mask_secrets(tmp_path: Path) -> None:
    rows = {r[0]: r for r in DemoSettings.describe()}
    assert rows["SCALELAB_OBJECTSTORE_PORT"][1:] == ("9000", "S3 port")
    assert "SCALELAB_DATA" in rows
    s = DemoSettings.from_env({}, access_key="secret", data=tmp_path)
    assert s.public()["access_key"] == "***"
    assert s.data_dir == tmp_path / "objectstore" and s.data_dir.is_dir()


def test_string_overrides_are_parsed_like_the_environment() -> None:
    s = DemoSettings.from_env({}, data="/tmp/somewhere", port="9100", strict="on")
    assert (s.data, s.port, s.strict) == (Path("/tmp/somewhere"), 9100, True)
