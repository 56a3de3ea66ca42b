from pathlib import Path

import pytest

from ortserve.config import load_config
from ortserve.errors import InvalidInput


def test_precedence_flag_over_env_over_file_over_default(tmp_path: Path) -> None:
    file = tmp_path / "ortserve.toml"
    file.write_text(
        '[server]\nport = 9001\nmetrics_port = 9002\nlog_level = "debug"\nproviders = ["A", "B"]\n'
    )
    config = load_config(
        str(file),
        environ={
            "ORTSERVE_PORT": "9101",
            "ORTSERVE_STRICT_PROVIDERS": "true",
            "ORTSERVE_LOG_LEVEL": "warning",
        },
        overrides={"port": 9201, "host": None},
    )
    assert config.port == 9201
    assert config.metrics_port == 9002
    assert config.log_level == "warning"
    assert config.strict_providers is True
    assert config.providers == ("A", "B")
    assert config.host == "127.0.0.1"


def test_env_lists_and_default_db_url(tmp_path: Path) -> None:
    config = load_config(
        environ={
            "ORTSERVE_PROVIDERS": "CUDAExecutionProvider, CPUExecutionProvider",
            "ORTSERVE_DATA_DIR": str(tmp_path),
        }
    )
    assert config.providers == ("CUDAExecutionProvider", "CPUExecutionProvider")
    assert config.db_url == f"sqlite:///{tmp_path.resolve() / 'registry.db'}"


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"ORTSERVE_PORT": "eighty"}, "ORTSERVE_PORT: cannot read 'eighty' as int"),
        ({"ORTSERVE_PORT": "70000"}, "port must be in 0..65535, got 70000"),
        ({"ORTSERVE_LOG_LEVEL": "loud"}, "log_level must be debug, info, warning or error, got 'loud'"),
        ({"ORTSERVE_STRICT_PROVIDERS": "maybe"}, "ORTSERVE_STRICT_PROVIDERS: cannot read 'maybe' as bool"),
        ({"ORTSERVE_MAX_MESSAGE_BYTES": "10"}, "max_message_bytes must be in 1 MiB..2047 MiB, got 10"),
        ({"ORTSERVE_GIL_SWITCH_INTERVAL_US": "0"}, "gil_switch_interval_us must be in 50..100000, got 0"),
        ({"ORTSERVE_POLL_INTERVAL_S": "0.001"}, "poll_interval_s must be in 0.05..3600, got 0.001"),
        ({"ORTSERVE_GRACE_PERIOD_S": "nan"}, "grace_period_s must be a finite number >= 0, got nan"),
        ({"ORTSERVE_GRACE_PERIOD_S": "-1"}, "grace_period_s must be a finite number >= 0, got -1.0"),
        ({"ORTSERVE_INTRA_OP_THREADS": "-2"}, "intra_op_threads must be >= 0, got -2"),
        ({"ORTSERVE_EXECUTOR_THREADS": "-1"}, "executor_threads must be >= 0, got -1"),
        ({"ORTSERVE_TOOLKIT_TIMEOUT_S": "0.5"}, "toolkit_timeout_s must be in 1..86400, got 0.5"),
    ],
)
def test_bad_values_name_the_setting(environ: dict[str, str], message: str) -> None:
    with pytest.raises(
        InvalidInput, match=message.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")
    ):
        load_config(environ=environ)


def test_bad_files(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="does not exist"):
        load_config(str(tmp_path / "missing.toml"), environ={})
    bad = tmp_path / "bad.toml"
    bad.write_text("port = [")
    with pytest.raises(InvalidInput, match="is not valid TOML"):
        load_config(str(bad), environ={})
    unknown = tmp_path / "unknown.toml"
    unknown.write_text("[server]\nprot = 1\n")
    with pytest.raises(InvalidInput, match="unknown setting"):
        load_config(str(unknown), environ={})


def test_shown_settings_hide_the_database_password() -> None:
    config = load_config(environ={"ORTSERVE_DB": "postgresql+psycopg://ortserve:s3cret@db:5432/registry"})
    shown = config.as_dict()
    assert shown["db"] == "postgresql+psycopg://ortserve:***@db:5432/registry"
    assert "s3cret" not in str(shown) and "s3cret" not in config.db_url_shown
    assert config.db_url_shown == "postgresql+psycopg://ortserve:***@db:5432/registry"
    assert load_config(environ={}).db_url_shown.startswith("sqlite:///")
