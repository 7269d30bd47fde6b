"""The image's entrypoint: the pod conventions of RunPod, Lambda and plain docker (docs/pod.md).

    PUBLIC_KEY / SSH_KEY    authorized keys for `trainer` -> OpenSSH's sshd on SSH_PORT (22); host keys made here
    JUPYTER_PASSWORD        -> JupyterLab on JUPYTER_PORT (8888) with that token; JUPYTER_DISABLE=1 turns it off
    /workspace (a volume)   holds the Hugging Face, Triton and inductor caches, the probe's report and outputs
    a command               runs as trainer (uid 1000), as PID 1 (exec: signals and exit code are the command's)
    no command              the probe in the foreground; or, when sshd or Jupyter started (or on RunPod),
                            the probe in the background and the container stays up

Only the setup runs as root: host keys, sshd (it binds port 22 and switches to the logged-in user), making the
volume usable by uid 1000. The command, Jupyter, the probe and every ssh login run as trainer. Started as another
user (`docker run --user 1000`), the entrypoint skips the root part and says so.

Runs as `python3 -I -S` (standard library only): it must work whatever the training venv holds. Every step it takes
is one line on stderr, prefixed `imagefactory pod:`.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

USER, UID, GID = "trainer", 1000, 1000
HOME = Path("/home/trainer")
WORKSPACE = Path("/workspace")
JUPYTER = Path("/opt/jupyter/bin/jupyter-lab")
VENV_PYTHON = "/opt/venv/bin/python"
JUPYTER_FILES = Path(__file__).resolve().parent / "jupyter"  # kernels/python3/kernel.json, jupyter_server_config.json
SSHD = "/usr/sbin/sshd"
RUN_DIR = Path("/run/imagefactory")  # generated sshd config, authorized keys, logs: container-local, not a layer
# No RSA host key: generating one takes up to seconds at start, and every OpenSSH client since 6.5 speaks ed25519.
HOST_KEY_TYPES = ("ed25519", "ecdsa")
# Variables that configure the pod, not the workload: kept out of ssh sessions (the keys are multi-line).
POD_CONTROL = ("PUBLIC_KEY", "SSH_KEY", "JUPYTER_PASSWORD")
# Per-session variables sshd and login set themselves.
SESSION_OWN = ("HOME", "USER", "LOGNAME", "SHELL", "TERM", "HOSTNAME", "PWD", "SHLVL", "OLDPWD", "_", "MAIL")
TRUE = ("1", "true", "yes", "on")
PREFIX = "imagefactory pod:"


def say(message: str) -> None:
    print(f"{PREFIX} {message}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Plan:
    """What to start, decided from the environment alone (pure: unit-tested without a container)."""

    ssh_keys: tuple[str, ...]
    ssh_port: int | None  # None: no sshd
    jupyter_port: int | None  # None: no Jupyter
    jupyter_token: str
    command: tuple[str, ...]
    stay_up: bool  # no command: keep the container up (daemons to serve, or a RunPod pod)
    probe_in_background: bool
    workspace: Path | None
    env: dict[str, str] = field(default_factory=dict)  # the workload's environment
    problems: tuple[str, ...] = ()  # usage errors: one line each, exit 2
    notes: tuple[str, ...] = ()  # said at start, not errors


def _setting(env: dict[str, str], name: str, notes: list[str]) -> str:
    """A pod setting; a RunPod secret reference left unexpanded (`{{ RUNPOD_SECRET_X }}`: no such secret) is unset,
    never used as a key or a Jupyter token."""
    value = env.get(name, "")
    if re.fullmatch(r"\s*\{\{.*\}\}\s*", value):
        notes.append(f"{name} is an unexpanded placeholder ({value.strip()}): treated as unset")
        return ""
    return value


def _port(env: dict[str, str], name: str, default: int, problems: list[str]) -> int:
    text = env.get(name, "").strip()
    if not text:
        return default
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        problems.append(f"{name}={text!r} is not a port number (1-65535)")
        return default
    return int(text)


def authorized_keys(text: str) -> tuple[str, ...]:
    """One key per line; RunPod passes all of an account's keys in PUBLIC_KEY, newline- or literal-\\n-separated."""
    lines = text.replace("\\n", "\n").splitlines()
    return tuple(line.strip() for line in lines if line.strip() and not line.strip().startswith("#"))


def workload_env(env: dict[str, str], workspace: Path | None) -> dict[str, str]:
    """The command's environment: the container's, with a home, and the caches on the volume when there is one.
    Variables the user set win: the entrypoint only fills in what is missing."""
    out = dict(env)
    out.update(HOME=str(HOME), USER=USER, LOGNAME=USER)
    if workspace is not None:
        cache = workspace / ".cache"
        out.setdefault("HF_HOME", str(cache / "huggingface"))
        if env.get("TRITON_CACHE_MANAGER") or env.get("IMAGEFACTORY_TRITON_BAKED_CACHE"):
            out.setdefault("TRITON_CACHE_DIR", str(cache / "triton"))
        out.setdefault("TORCHINDUCTOR_CACHE_DIR", str(cache / "torchinductor"))
    return out


def plan(env: dict[str, str], argv: list[str], workspace: Path | None) -> Plan:
    problems: list[str] = []
    notes: list[str] = []
    keys = authorized_keys(_setting(env, "PUBLIC_KEY", notes) or _setting(env, "SSH_KEY", notes))
    ssh_port = _port(env, "SSH_PORT", 22, problems)
    jupyter_port = _port(env, "JUPYTER_PORT", 8888, problems)
    token = _setting(env, "JUPYTER_PASSWORD", notes)
    jupyter = bool(token) and env.get("JUPYTER_DISABLE", "").strip().lower() not in TRUE
    if keys and jupyter and ssh_port == jupyter_port:
        problems.append(f"SSH_PORT and JUPYTER_PORT are both {ssh_port}")
    daemons = bool(keys) or jupyter
    command = tuple(argv)
    stay_up = not command and (daemons or bool(env.get("RUNPOD_POD_ID")))
    probe_env = env.get("PROBE_AT_START", "").strip().lower()
    probe_in_background = stay_up if probe_env == "" else probe_env in TRUE
    return Plan(
        ssh_keys=keys,
        ssh_port=ssh_port if keys else None,
        jupyter_port=jupyter_port if jupyter else None,
        jupyter_token=token,
        command=command,
        stay_up=stay_up,
        probe_in_background=probe_in_background,
        workspace=workspace,
        env=workload_env(env, workspace),
        problems=tuple(problems),
        notes=tuple(notes),
    )


def find_workspace() -> Path | None:
    """/workspace when a volume (or any directory) is there: the image itself has none."""
    return WORKSPACE if WORKSPACE.is_dir() else None


# ---- root-only setup ----


def as_trainer_argv(argv: list[str] | tuple[str, ...]) -> list[str]:
    """Run argv as trainer: setpriv (util-linux) drops uid, gid and groups and forbids regaining privileges."""
    return ["setpriv", f"--reuid={UID}", f"--regid={GID}", "--init-groups", "--no-new-privs", "--", *argv]


def prepare_workspace(workspace: Path) -> None:
    """Make the volume usable by uid 1000: its top directory only (RunPod's volumes are root-owned), and the cache
    directories. Files that are already there keep their owners."""
    info = workspace.stat()
    if info.st_uid == 0 and not _writable_by_trainer(info):
        os.chown(workspace, UID, GID)
        say(f"{workspace} was owned by root: now by {USER} (uid {UID}), its contents untouched")
    elif info.st_uid not in (0, UID) and not _writable_by_trainer(info):
        say(f"WARNING: {workspace} belongs to uid {info.st_uid} and is not writable by {USER} (uid {UID}): "
            f"outputs and caches there will fail (chown it on the host, or mount another directory)")
        return
    for sub in (".cache", ".cache/huggingface", ".cache/triton", ".cache/torchinductor"):
        path = workspace / sub
        if not path.exists():
            path.mkdir(mode=0o755)
            os.chown(path, UID, GID)


def _writable_by_trainer(info: os.stat_result) -> bool:
    if info.st_uid == UID:
        return bool(info.st_mode & 0o200)
    if info.st_gid == GID:
        return bool(info.st_mode & 0o020)
    return bool(info.st_mode & 0o002)


def link_inductor_cache(target: Path) -> None:
    """unsloth_zoo pops TORCHINDUCTOR_CACHE_DIR at import; inductor then uses /tmp/torchinductor_<user>. Making that
    path a link to the volume keeps inductor's kernels across restarts either way."""
    default = Path("/tmp") / f"torchinductor_{USER}"
    if default.is_symlink() or default.exists():
        return  # a link from an earlier start of this container, or a cache the user made: left alone
    default.symlink_to(target)
    os.lchown(default, UID, GID)


def host_keys(ssh_dir: Path = Path("/etc/ssh")) -> list[str]:
    """Host keys made at first start of this container (never in an image layer); kept for its later starts."""
    made = []
    for kind in HOST_KEY_TYPES:
        key = ssh_dir / f"ssh_host_{kind}_key"
        if not key.exists():
            subprocess.run(["ssh-keygen", "-q", "-t", kind, "-N", "", "-C", f"imagefactory-{kind}", "-f", str(key)],
                           check=True, stdin=subprocess.DEVNULL)
            made.append(kind)
    return made


def session_env(env: dict[str, str]) -> dict[str, str]:
    """What an ssh session sees: the workload's environment, minus the pod's own settings and per-session names."""
    return {k: v for k, v in env.items()
            if k not in POD_CONTROL and k not in SESSION_OWN and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", k)}


def sshd_config(port: int, keys_file: Path, env: dict[str, str]) -> str:
    """A complete sshd_config: key logins for trainer only; SetEnv carries the container's environment into
    `ssh host cmd` sessions (login shells get it from /etc/profile.d, which resets PATH first)."""
    lines = [
        "# Written by the imagefactory entrypoint at container start (pod/entrypoint.py).",
        f"Port {port}",
        *(f"HostKey /etc/ssh/ssh_host_{kind}_key" for kind in HOST_KEY_TYPES),
        f"AuthorizedKeysFile {keys_file} .ssh/authorized_keys",
        f"AllowUsers {USER}",
        "PermitRootLogin no",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "PubkeyAuthentication yes",
        "UsePAM no",
        "PrintMotd no",
        "X11Forwarding no",
        "AllowTcpForwarding yes",  # port forwarding to TensorBoard and the like
        "Subsystem sftp internal-sftp",
    ]
    values = [f'"{k}={v}"' for k, v in sorted(session_env(env).items()) if _sshd_safe(v)]
    if values:
        lines.append("SetEnv " + " ".join(values))
    return "\n".join(lines) + "\n"


def _sshd_safe(value: str) -> bool:
    return '"' not in value and "\\" not in value and value.isprintable()


def profile_script(env: dict[str, str], report: Path | None) -> str:
    """/etc/profile.d script for login shells: the container's environment, and a loud line if the probe failed."""
    lines = ["# Written by the imagefactory entrypoint at container start (pod/entrypoint.py)."]
    lines += [f"export {k}={shlex.quote(v)}" for k, v in sorted(session_env(env).items())]
    if report is not None:
        failed = shlex.quote(str(report.with_suffix(".failed")))
        lines.append(f"[ -e {failed} ] && echo \"imagefactory: the start probe FAILED: $(cat {failed})\" >&2")
    return "\n".join(lines) + "\n"


def write_private(path: Path, text: str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(text)
    temporary.chmod(mode)
    temporary.replace(path)


def start_sshd(p: Plan, report: Path | None) -> subprocess.Popen | None:
    made = host_keys()
    if made:
        say(f"made host keys ({', '.join(made)}) for this container")
    keys_file = RUN_DIR / "authorized_keys"
    write_private(keys_file, "\n".join(p.ssh_keys) + "\n")
    config = RUN_DIR / "sshd_config"
    write_private(config, sshd_config(p.ssh_port or 22, keys_file, p.env), 0o600)
    write_private(Path("/etc/profile.d/imagefactory.sh"), profile_script(p.env, report))
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege-separation directory
    log = RUN_DIR / "sshd.log"
    check = subprocess.run([SSHD, "-t", "-f", str(config)], capture_output=True, text=True, check=False)
    if check.returncode != 0:
        reason = (check.stderr.strip().splitlines() or ["no reason given"])[-1]
        say(f"FAILED: sshd refuses its configuration ({reason}): not started")
        return None
    proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(config)], stdout=log.open("ab"), stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL)
    say(f"sshd on port {p.ssh_port} for {len(p.ssh_keys)} key(s): ssh -p {p.ssh_port} {USER}@HOST (log {log})")
    return proc


def start_jupyter(p: Plan, root: bool) -> subprocess.Popen | None:
    if not JUPYTER.exists():
        say(f"JUPYTER_PASSWORD is set but this image has no JupyterLab ({JUPYTER}): not started")
        return None
    notebook_dir = p.workspace if p.workspace is not None else HOME
    # Static settings (remote access behind RunPod's HTTPS proxy, login-shell terminals, no language-server scan)
    # are in pod/jupyter/jupyter_server_config.json, found through JUPYTER_CONFIG_PATH.
    argv = [str(JUPYTER), "--ip=0.0.0.0", f"--port={p.jupyter_port}", f"--ServerApp.root_dir={notebook_dir}"]
    # The token through the environment, not the command line (ps shows that to every user). JUPYTER_PATH: the
    # kernel spec that runs /opt/venv's python (ipykernel's own would run /opt/jupyter's, which has no torch).
    env = dict(p.env, JUPYTER_TOKEN=p.jupyter_token, SHELL="/bin/bash", JUPYTER_PATH=str(JUPYTER_FILES),
               JUPYTER_CONFIG_PATH=str(JUPYTER_FILES))
    env.pop("JUPYTER_PASSWORD", None)
    log_dir = RUN_DIR if root else Path(env["HOME"])
    log_dir.mkdir(parents=True, exist_ok=True)
    log = log_dir / "jupyter.log"
    proc = subprocess.Popen(as_trainer_argv(argv) if root else argv, env=env, cwd=str(notebook_dir),
                            stdout=log.open("ab"), stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    if root:
        os.chown(log, UID, GID)
    say(f"JupyterLab on port {p.jupyter_port} (token: $JUPYTER_PASSWORD), notebooks in {notebook_dir} (log {log})")
    return proc


def report_path(p: Plan) -> Path:
    return (p.workspace or HOME) / "probe-report.json"


def start_probe(p: Plan, root: bool) -> subprocess.Popen:
    argv = [sys.executable, "-I", "-S", __file__, "probe-at-start", str(report_path(p))]
    say(f"probe running in the background: report {report_path(p)}")
    return subprocess.Popen(as_trainer_argv(argv) if root else argv, env=p.env, stdin=subprocess.DEVNULL,
                            cwd=str(HOME))


def probe_at_start(report: Path) -> int:
    """Background job: `python -m probe --json` into the report; a failure is loud but locks no one out."""
    failed_marker = report.with_suffix(".failed")
    t0 = time.monotonic()
    done = subprocess.run([VENV_PYTHON, "-m", "probe", "--json"], capture_output=True, text=True, check=False)
    seconds = time.monotonic() - t0
    try:
        doc = json.loads(done.stdout)
    except ValueError:
        doc = None
    temporary = report.with_name(report.name + ".tmp")
    try:
        temporary.write_text(done.stdout if doc is not None else json.dumps(
            {"ok": False, "exit_code": done.returncode, "error": done.stderr.strip()[-2000:]}, indent=2))
        temporary.replace(report)
    except OSError as exc:
        say(f"probe: cannot write {report}: {exc.strerror}")
    if done.returncode == 0:
        failed_marker.unlink(missing_ok=True)
        say(f"probe passed in {seconds:.0f} s ({report})")
        return 0
    bad = [f"{c['name']}: {c['reason']}" for c in (doc or {}).get("checks", []) if c.get("status") == "fail"]
    summary = "; ".join(bad)[:400] or (done.stderr.strip().splitlines() or ["no output"])[-1]
    try:
        failed_marker.write_text(f"{summary} (see {report})\n")
    except OSError:
        pass
    for _ in range(2):  # loud: the log line users see first on RunPod's and docker's log views
        say(f"PROBE FAILED (exit {done.returncode}): {summary} -- the pod stays up; report {report}")
    return done.returncode


def supervise(children: dict[str, subprocess.Popen]) -> int:
    """PID 1 while the pod stays up: reap every child, pass SIGTERM/SIGINT on, exit when told to."""
    stopping = []

    def stop(signum, _frame):
        stopping.append(signum)
        for proc in children.values():
            if proc.poll() is None:
                proc.terminate()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    names = {proc.pid: name for name, proc in children.items()}
    while True:
        try:
            pid, status = os.wait()
        except ChildProcessError:  # no child left
            if stopping:
                return 0
            signal.pause()
            continue
        except InterruptedError:
            continue
        name = names.pop(pid, None)
        if stopping and not any(p.poll() is None for p in children.values()):
            return 0
        if name and not stopping and name != "probe":
            say(f"{name} exited (status {os.waitstatus_to_exitcode(status)}); the container stays up")


def workload_command(p: Plan) -> list[str]:
    """What runs as the container's main process: the command; with none, the probe's report (`docker run IMAGE`
    stays meaningful); nothing when the pod stays up (the entrypoint then supervises)."""
    if p.command:
        return list(p.command)
    return [] if p.stay_up else [VENV_PYTHON, "-m", "probe"]


def guarded(what: str, step, *args):
    """Run one setup step; a failure is said loudly and the rest of the pod still starts (no one is locked out)."""
    try:
        return step(*args)
    except (OSError, subprocess.SubprocessError) as exc:
        say(f"FAILED: {what}: {exc}")
        return None


def main(argv: list[str]) -> int:
    if argv[:1] == ["probe-at-start"] and len(argv) == 2:
        return probe_at_start(Path(argv[1]))
    env = dict(os.environ)
    root = os.geteuid() == 0
    workspace = find_workspace()
    p = plan(env, argv, workspace)
    for note in p.notes:
        say(note)
    for problem in p.problems:
        say(f"error: {problem}")
    if p.problems:
        return 2
    started = time.monotonic()
    if root and workspace is not None:
        guarded(f"preparing {workspace}", prepare_workspace, workspace)
        if "TORCHINDUCTOR_CACHE_DIR" not in env:
            guarded("linking inductor's cache", link_inductor_cache, workspace / ".cache" / "torchinductor")
    children: dict[str, subprocess.Popen] = {}
    report = report_path(p) if p.probe_in_background else None
    if p.ssh_port is not None:
        if root:
            proc = guarded("starting sshd", start_sshd, p, report)
            if proc:
                children["sshd"] = proc
        else:
            say(f"PUBLIC_KEY is set but sshd needs root (this container runs as uid {os.geteuid()}): not started")
    if p.jupyter_port is not None:
        proc = guarded("starting JupyterLab", start_jupyter, p, root)
        if proc:
            children["jupyter"] = proc
    if p.probe_in_background:
        proc = guarded("starting the probe", start_probe, p, root)
        if proc:
            children["probe"] = proc
    if children:
        say(f"started {', '.join(children)} in {time.monotonic() - started:.1f} s")
    command = workload_command(p)
    if not command:
        say("ready; no command given: the container stays up (stop it to end the pod)")
        return supervise(children)
    if root:
        command = as_trainer_argv(command)
    try:
        os.execvpe(command[0], command, p.env)
    except OSError as exc:
        say(f"cannot run {shlex.join(p.command or command)}: {exc.strerror}")
        return 127 if isinstance(exc, FileNotFoundError) else 126


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
