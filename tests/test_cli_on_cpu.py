"""The CLI on bad input: one line that says what to do, exit code 2, nothing overwritten."""

from __future__ import annotations

import fcntl

import pytest

from glore_ray import cli
from glore_ray.config import ConfigError, load_config
from tests.conftest import REPO

SMOKE = str(REPO / "configs" / "smoke.yaml")


def test_duplicate_yaml_keys_are_a_config_error(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("name: a\nrollout:\n  k_samples: 4\n  k_samples: 8\n")
    with pytest.raises(ConfigError, match=r"line 4: key 'k_samples' is given twice"):
        load_config(cfg)
    cfg.write_text("name: a\nname: b\n")
    with pytest.raises(ConfigError, match="'name'"):
        load_config(cfg)


def test_a_stage_error_is_one_line_and_exit_2(tmp_path, capsys):
    code = cli.main(["label", SMOKE, f"output_dir={tmp_path}"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("glore: error: stage 'label' needs stage 'data' first")
    assert err.count("\n") == 1 and "Traceback" not in err
    # the traceback is kept in the run's log
    assert "Traceback" in (tmp_path / "smoke" / "logs" / "glore.log").read_text()
    with pytest.raises(ValueError, match="needs stage"):
        cli.main(["label", SMOKE, f"output_dir={tmp_path}", "--debug"])


def test_a_second_writer_of_a_run_folder_stops_at_once(tmp_path, capsys):
    run_dir = tmp_path / "smoke"
    run_dir.mkdir()
    with open(run_dir / ".lock", "a+") as held:  # another process's `glore run`, as flock sees it
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        held.write("4242\n")
        held.flush()
        code = cli.main(["data", SMOKE, f"output_dir={tmp_path}"])
        err = capsys.readouterr().err
        assert code == 2 and f"run folder {run_dir} is in use by pid 4242" in err
        assert not (run_dir / "data").exists()
    # once it is released, the run goes ahead
    assert cli.main(["data", SMOKE, f"output_dir={tmp_path}"]) == 0
    assert (run_dir / "data" / "_DONE.json").exists()
