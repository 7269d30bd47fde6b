"""The entrypoint's decisions from the environment (pure), and the files it writes, checked by their own tools."""

from __future__ import annotations

import subprocess
from pathlib import Path

from pod import entrypoint as ep

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJ5uYz1Q3mKq3U6wJ1n2r9zv2cQ3xq2m2l1a0b9c8d7e user@laptop"


def plan(env: dict[str, str], argv: list[str] | None = None, workspace: Path | None = None) -> ep.Plan:
    return ep.plan({"PATH": "/opt/venv/bin:/usr/bin:/bin", **env}, argv or [], workspace)


def test_neither_variable_starts_nothing_and_runs_the_command_as_given():
    p = plan({}, ["python", "-c", "print(1)"])
    assert (p.ssh_port, p.jupyter_port, p.stay_up, p.probe_in_background) == (None, None, False, False)
    assert p.command == ("python", "-c", "print(1)")


def test_no_command_no_daemon_runs_the_probe_in_the_foreground():
    p = plan({})
    assert p.command == () and not p.stay_up and not p.probe_in_background
    assert ep.workload_command(p) == ["/opt/venv/bin/python", "-m", "probe"]
    assert ep.workload_command(plan({"PUBLIC_KEY": KEY})) == []  # the pod stays up instead
    assert ep.workload_command(plan({}, ["python", "-V"])) == ["python", "-V"]


def test_public_key_starts_sshd_on_22_and_ssh_key_is_an_alias():
    assert plan({"PUBLIC_KEY": KEY}).ssh_port == 22
    assert plan({"SSH_KEY": KEY}).ssh_keys == (KEY,)


def test_runpod_style_key_lists_split_on_newlines_and_literal_backslash_n():
    other = KEY.replace("user@laptop", "other@desk")
    assert plan({"PUBLIC_KEY": f"{KEY}\\n{other}\n\n"}).ssh_keys == (KEY, other)


def test_jupyter_password_starts_jupyter_unless_disabled():
    assert plan({"JUPYTER_PASSWORD": "x"}).jupyter_port == 8888
    assert plan({"JUPYTER_PASSWORD": "x", "JUPYTER_DISABLE": "1"}).jupyter_port is None
    assert plan({"JUPYTER_PASSWORD": ""}).jupyter_port is None


def test_port_overrides_and_bad_ports_are_usage_errors():
    p = plan({"PUBLIC_KEY": KEY, "SSH_PORT": "2222", "JUPYTER_PASSWORD": "x", "JUPYTER_PORT": "18888"})
    assert (p.ssh_port, p.jupyter_port, p.problems) == (2222, 18888, ())
    assert plan({"SSH_PORT": "ssh"}).problems == ("SSH_PORT='ssh' is not a port number (1-65535)",)
    assert plan({"JUPYTER_PORT": "70000"}).problems
    clash = plan({"PUBLIC_KEY": KEY, "JUPYTER_PASSWORD": "x", "SSH_PORT": "9000", "JUPYTER_PORT": "9000"})
    assert clash.problems == ("SSH_PORT and JUPYTER_PORT are both 9000",)


def test_daemons_without_a_command_keep_the_pod_up_and_probe_in_the_background():
    p = plan({"PUBLIC_KEY": KEY})
    assert p.stay_up and p.probe_in_background
    with_command = plan({"PUBLIC_KEY": KEY}, ["train.py"])
    assert not with_command.stay_up and not with_command.probe_in_background
    assert plan({"PUBLIC_KEY": KEY}, ["train.py"]) .ssh_port == 22  # sshd still serves while the command runs
    assert plan({"RUNPOD_POD_ID": "abc"}).stay_up
    assert plan({"PROBE_AT_START": "0", "PUBLIC_KEY": KEY}).probe_in_background is False
    assert plan({"PROBE_AT_START": "1"}, ["train.py"]).probe_in_background is True


def test_the_workspace_holds_the_caches_unless_the_user_chose_otherwise(tmp_path):
    env = plan({"IMAGEFACTORY_TRITON_BAKED_CACHE": "/opt/triton-cache"}, workspace=tmp_path).env
    assert env["HF_HOME"] == f"{tmp_path}/.cache/huggingface"
    assert env["TRITON_CACHE_DIR"] == f"{tmp_path}/.cache/triton"
    assert env["TORCHINDUCTOR_CACHE_DIR"] == f"{tmp_path}/.cache/torchinductor"
    assert (env["HOME"], env["USER"]) == ("/home/trainer", "trainer")
    mine = plan({"HF_HOME": "/data/hf"}, workspace=tmp_path).env
    assert mine["HF_HOME"] == "/data/hf"
    bare = plan({}, workspace=None).env
    assert "HF_HOME" not in bare and "TRITON_CACHE_DIR" not in bare


def test_commands_drop_to_trainer_with_setpriv():
    argv = ep.as_trainer_argv(["python", "-c", "print(1)"])
    assert argv[:1] == ["setpriv"] and "--reuid=1000" in argv and "--no-new-privs" in argv
    assert argv[argv.index("--") + 1:] == ["python", "-c", "print(1)"]


def test_ssh_sessions_get_the_environment_but_not_the_pod_secrets():
    env = ep.session_env({"PATH": "/opt/venv/bin:/usr/bin", "HF_TOKEN": "hf_x", "JUPYTER_PASSWORD": "secret",
                          "PUBLIC_KEY": KEY, "HOME": "/root", "BAD NAME": "1"})
    assert env == {"PATH": "/opt/venv/bin:/usr/bin", "HF_TOKEN": "hf_x"}


def test_sshd_config_carries_the_environment_quoted_and_skips_what_it_cannot_quote(tmp_path):
    # sshd's own check of this file runs in the image (tests/pod/test_pod_image.py): the entrypoint runs `sshd -t`.
    config = ep.sshd_config(2222, tmp_path / "keys", {"PATH": "/opt/venv/bin:/usr/bin", "A": "with space",
                                                      "Q": 'has "quote"'})
    assert 'SetEnv "A=with space" "PATH=/opt/venv/bin:/usr/bin"' in config.splitlines()
    assert "Port 2222" in config.splitlines() and "PermitRootLogin no" in config.splitlines()


def test_the_profile_script_is_valid_shell_and_exports_what_it_says(tmp_path):
    script = tmp_path / "env.sh"
    script.write_text(ep.profile_script({"PATH": "/opt/venv/bin:/usr/bin:/bin", "ODD": "it's $HOME"}, None))
    out = subprocess.run(["sh", "-c", f'. {script}; printf "%s|%s" "$PATH" "$ODD"'], capture_output=True, text=True,
                         check=True).stdout
    assert out == "/opt/venv/bin:/usr/bin:/bin|it's $HOME"


def test_a_failed_probe_is_announced_to_login_shells(tmp_path):
    report = tmp_path / "probe-report.json"
    report.with_suffix(".failed").write_text("gpu.visible: no GPU\n")
    script = tmp_path / "env.sh"
    script.write_text(ep.profile_script({}, report))
    done = subprocess.run(["sh", "-c", f". {script}"], capture_output=True, text=True, check=False)
    assert "the start probe FAILED: gpu.visible: no GPU" in done.stderr


def test_an_unexpanded_runpod_secret_is_never_a_key_or_a_token():
    p = plan({"PUBLIC_KEY": "{{ RUNPOD_SECRET_PUBLIC_KEY }}", "JUPYTER_PASSWORD": "{{ RUNPOD_SECRET_JUPYTER_PASSWORD }}"})
    assert (p.ssh_port, p.jupyter_port) == (None, None)
    assert len(p.notes) == 2 and "treated as unset" in p.notes[0]


def test_a_failing_setup_step_is_said_and_does_not_stop_the_pod(capsys):
    def broken():
        raise PermissionError(13, "Permission denied", "/workspace")

    assert ep.guarded("preparing /workspace", broken) is None
    assert "imagefactory pod: FAILED: preparing /workspace: [Errno 13] Permission denied" in capsys.readouterr().err
