"""Docker, through one client: detection of a BuildKit-capable client, build, run, tag, inspect, import,
and what publishing needs (label a gated image, push with progress, pull, read a file out of an image).
The only module that knows Docker's command lines; every command goes through imagefactory.run.

Builds need BuildKit (cache and secret mounts). `docker buildx build` is used where buildx exists,
else the classic client with DOCKER_BUILDKIT=1 where that client accepts it (Debian's docker.io 20.10
does; some newer clients without buildx refuse it). Capability is detected, not assumed: each
candidate client is asked, and the first one able to build with BuildKit wins.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from imagefactory import log
from imagefactory.errors import CommandError, DockerCommandError, DockerSetupError, UsageError
from imagefactory.run import Completed, run

BuildMode = Literal["buildx", "classic"]

# RUN --mount (cache, secret, bind from a stage) needs a daemon whose built-in BuildKit frontend
# knows them: Docker 19.03 or later.
MIN_SERVER = (19, 3)
DOCKER_ENV = "IMAGEFACTORY_DOCKER"
INSTALL_HINT = "install Debian's docker.io (apt-get install docker.io) or Docker with the buildx plugin"


@dataclass(frozen=True)
class DockerClient:
    executable: str
    mode: BuildMode
    server_version: str

    def argv(self, *args: str) -> list[str]:
        return [self.executable, *args]

    @property
    def build_env(self) -> dict[str, str]:
        return {"DOCKER_BUILDKIT": "1"} if self.mode == "classic" else {}

    def build_argv(self) -> list[str]:
        return self.argv("buildx", "build", "--load") if self.mode == "buildx" else self.argv("build")


def parse_version(text: str) -> tuple[int, int]:
    """`20.10.24+dfsg1` -> (20, 10); anything unparsable -> (0, 0)."""
    parts = text.strip().lstrip("v").split(".")
    try:
        return int(parts[0]), int("".join(ch for ch in parts[1] if ch.isdigit()) or 0)
    except (IndexError, ValueError):
        return (0, 0)


def candidate_clients(explicit: str | None = None) -> list[str]:
    """The client named (--docker or $IMAGEFACTORY_DOCKER), else every `docker` on PATH in order."""
    chosen = explicit or os.environ.get(DOCKER_ENV)
    if chosen:
        return [chosen]
    found: list[str] = []
    for directory in os.environ.get("PATH", "").split(os.pathsep):
        path = shutil.which("docker", path=directory)
        if path and os.path.realpath(path) not in {os.path.realpath(p) for p in found}:
            found.append(path)
    return found


def build_mode(executable: str) -> BuildMode | None:
    """How this client builds with BuildKit, or None when it cannot."""
    if run([executable, "buildx", "version"], capture=True, check=False, quiet_echo=True).ok:
        return "buildx"
    probe = run([executable, "build", "--help"], env={"DOCKER_BUILDKIT": "1"}, capture=True, check=False, quiet_echo=True)
    if probe.ok and "--secret" in probe.stdout:
        return "classic"
    return None


def detect(explicit: str | None = None) -> DockerClient:
    """The client to use, with a reachable daemon that is recent enough; else DockerSetupError."""
    clients = candidate_clients(explicit)
    if not clients:
        raise DockerSetupError(f"no docker client found on PATH: {INSTALL_HINT}")
    rejected: list[str] = []
    for executable in clients:
        try:
            mode = build_mode(executable)
        except CommandError as error:
            rejected.append(f"{executable} ({error.message})")
            continue
        if mode is None:
            rejected.append(f"{executable} (no buildx, refuses DOCKER_BUILDKIT=1)")
            continue
        version = run([executable, "version", "--format", "{{.Server.Version}}"], capture=True, check=False, quiet_echo=True)
        if not version.ok:
            reason = version.tail[-1] if version.tail else "no answer"
            raise DockerSetupError(
                f"no Docker daemon answers {executable} ({reason}): start dockerd "
                "(e.g. `dockerd --bridge=none --iptables=false &`) or check DOCKER_HOST"
            )
        server = version.stdout.strip()
        if parse_version(server) < MIN_SERVER:
            raise DockerSetupError(
                f"Docker daemon {server} is too old for BuildKit mounts (need {MIN_SERVER[0]}.{MIN_SERVER[1]:02d}+): {INSTALL_HINT}"
            )
        return DockerClient(executable, mode, server)
    raise DockerSetupError(f"no BuildKit-capable docker client: {'; '.join(rejected)}; {INSTALL_HINT} or pass --docker PATH")


# ---- operations -------------------------------------------------------------------------------


# What `--image` and report files may name: a full or short image ID, or a reference `name[:tag][@digest]`.
# Never anything docker would read as an option (`--help`), never whitespace (fullmatch, ASCII).
IMAGE_ID = re.compile(r"sha256:[0-9a-f]{64}", re.ASCII)
IMAGE_REF = re.compile(
    r"(?:sha256:)?[0-9a-f]{12,64}"
    r"|[a-z0-9][a-z0-9._-]*(?::[0-9]{1,5})?(?:/[a-z0-9]+(?:[._-][a-z0-9]+)*)*"
    r"(?::[A-Za-z0-9_][A-Za-z0-9._-]{0,127})?(?:@sha256:[0-9a-f]{64})?", re.ASCII)


def check_image_ref(text: str, what: str = "--image") -> str:
    """The reference as given, or UsageError (exit 2) naming the argument."""
    if not isinstance(text, str) or len(text) > 512 or not IMAGE_REF.fullmatch(text):
        raise UsageError(f"{what} {str(text)[:80]!r}: not an image ID or reference (sha256:<hex>, name[:tag])")
    return text


def image_inspect(client: DockerClient, ref: str) -> dict | None:
    """`docker image inspect` as a dict, or None when there is no such local image (or an answer that is not one)."""
    done = run(client.argv("image", "inspect", "--", ref), capture=True, check=False, quiet_echo=True)
    if not done.ok:
        return None
    try:
        data = json.loads(done.stdout)
    except ValueError:
        return None
    return data[0] if isinstance(data, list) and data and isinstance(data[0], dict) else None


def image_exists(client: DockerClient, ref: str) -> bool:
    return image_inspect(client, ref) is not None


def image_size(client: DockerClient, ref: str) -> int | None:
    info = image_inspect(client, ref)
    return int(info["Size"]) if info and "Size" in info else None


def secret_spec(key: str, path: Path) -> str:
    """`id=KEY,src=PATH` for --secret, which Docker parses as one CSV record: a field holding a comma or a
    quote is quoted by the CSV rules (doubled quotes) so that the path stays whole."""
    source = f"src={path}"
    if "\n" in source or "\r" in source:
        raise DockerCommandError(f"secret {key}: a path with a line break cannot be passed to BuildKit: {str(path)!r}")
    if "," in source or '"' in source:
        source = '"' + source.replace('"', '""') + '"'
    return f"id={key},{source}"


def build(
    client: DockerClient,
    *,
    context: Path,
    dockerfile: Path,
    iidfile: Path,
    build_args: Mapping[str, str],
    secrets: Mapping[str, Path],
    log: Path,
    show: bool,
    network: str = "host",
    labels: Mapping[str, str] | None = None,
    on_line: Callable[[str], None] | None = None,
    platform: str | None = None,
) -> Completed:
    """One BuildKit build; the image ID lands in `iidfile` (no tag: tags come after the gate). `platform`: another
    platform than the host's (its stages run under QEMU user emulation)."""
    argv = client.build_argv() + ["--network", network, "--progress", "plain", "--iidfile", str(iidfile), "-f", str(dockerfile)]
    if platform is not None:
        argv += ["--platform", platform]
    for key, value in build_args.items():
        argv += ["--build-arg", f"{key}={value}"]
    for key, path in secrets.items():
        argv += ["--secret", secret_spec(key, path)]
    for key, value in (labels or {}).items():
        argv += ["--label", f"{key}={value}"]
    argv.append(str(context))
    return run(argv, env=client.build_env, log=log, show=show, check=False, on_line=on_line)


def run_container(
    client: DockerClient,
    image: str,
    command: Sequence[str],
    *,
    network: str = "none",
    gpu_args: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    timeout: float | None = None,
) -> Completed:
    """`docker run --rm` with captured stdout (the probe's JSON) and streamed stderr. On a timeout the
    container is removed too: killing the client alone leaves it running."""
    name = f"imagefactory-{uuid.uuid4().hex[:12]}"
    argv = client.argv("run", "--rm", "--name", name, "--network", network)
    argv += list(gpu_args)
    for key, value in (env or {}).items():
        argv += ["-e", f"{key}={value}"]
    argv += [image, *command]
    try:
        return run(argv, capture=True, check=False, timeout=timeout)
    except CommandError:
        run(client.argv("rm", "--force", name), capture=True, check=False, quiet_echo=True)
        raise


def tag(client: DockerClient, image_id: str, ref: str) -> None:
    try:
        run(client.argv("tag", "--", image_id, ref))
    except CommandError as error:
        raise DockerCommandError(f"tagging {ref}: {error.message}") from None


def untag(client: DockerClient, ref: str) -> None:
    """Remove one name; Docker deletes the image itself when that was its last name."""
    try:
        run(client.argv("image", "rm", "--no-prune", ref))
    except CommandError as error:
        raise DockerCommandError(f"removing the tag {ref}: {error.message}") from None


def import_rootfs(client: DockerClient, tarball: Path, ref: str, changes: Sequence[str]) -> None:
    argv = client.argv("import")
    for change in changes:
        argv += ["--change", change]
    try:
        run(argv + [str(tarball), ref])
    except CommandError as error:
        raise DockerCommandError(f"importing {tarball} as {ref}: {error.message}") from None


def build_rootfs_image(client: DockerClient, tarball: Path, ref: str, changes: Sequence[str], platform: str) -> None:
    """An image of a root filesystem tarball labelled with `platform` (docker import cannot label one on 20.10):
    BuildKit, `FROM scratch` + `ADD` (which unpacks the tar with owners and modes), in the tarball's folder."""
    context = tarball.parent
    dockerfile = context / "Dockerfile.rootfs"
    dockerfile.write_text("FROM scratch\n" + f"ADD {tarball.name} /\n" + "".join(f"{line}\n" for line in changes), encoding="utf-8")
    try:
        run([*client.build_argv(), "--platform", platform, "--quiet", "-f", str(dockerfile), "-t", ref, str(context)],
            env=client.build_env)
    except CommandError as error:
        raise DockerCommandError(f"making {ref} ({platform}) from {tarball}: {error.message}") from None
    finally:
        dockerfile.unlink(missing_ok=True)


def host_has_gpus(vendor: str) -> bool:
    """True when the host shows GPUs of that vendor: nvidia-smi lists one (NVIDIA), or ROCm's kernel
    driver node /dev/kfd exists (AMD). Then the gate hands them to the container (gpu_run_args)."""
    if vendor == "amd":
        return Path("/dev/kfd").exists()
    if shutil.which("nvidia-smi") is None:
        return False
    done = run(["nvidia-smi", "-L"], capture=True, check=False, quiet_echo=True, timeout=30)
    return done.ok and "GPU" in done.stdout


def gpu_run_args(vendor: str) -> tuple[str, ...]:
    """How `docker run` gives a container the host's GPUs: NVIDIA's container toolkit hook, or ROCm's
    device nodes plus the group that owns them (AMD's documented docker flags)."""
    if vendor == "amd":
        return ("--device", "/dev/kfd", "--device", "/dev/dri", "--group-add", "video")
    return ("--gpus", "all")


# ---- publishing: label, push, pull, read --------------------------------------------------------

PUSH_DIGEST = re.compile(r"digest: (sha256:[0-9a-f]{64})")
LAYER_STATE = re.compile(r"^([0-9a-f]{12}): (.+)$")
LAYER_DONE = ("Pushed", "Layer already exists", "Mounted from")


class PushLayers:
    """Per-layer state from `docker push` output lines (docker prints state changes when not on a TTY)."""

    def __init__(self) -> None:
        self.states: dict[str, str] = {}
        self.digest: str | None = None

    def feed(self, line: str) -> bool:
        """Take one output line; True when it changed what the progress line shows."""
        found = PUSH_DIGEST.search(line)
        if found:
            self.digest = found.group(1)
            return True
        state = LAYER_STATE.match(line.strip())
        if state is None:
            return False
        self.states[state.group(1)] = state.group(2)
        return True

    @property
    def done(self) -> int:
        return sum(state.startswith(LAYER_DONE) for state in self.states.values())

    def describe(self, ref: str) -> str:
        return f"pushing {ref}: {self.done}/{len(self.states)} layers"


def push(client: DockerClient, ref: str) -> str:
    """Push with a live progress line (layers done / total, elapsed; docker's own lines in logs);
    return the digest docker reports."""
    layers = PushLayers()
    console = log.console()
    columns = (SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True, disable=not console.is_terminal) as progress:
        task = progress.add_task(layers.describe(ref), total=None)

        def watch(line: str) -> None:
            if layers.feed(line):
                progress.update(task, description=layers.describe(ref))
            if not console.is_terminal:
                log.echo(line)

        try:
            run(client.argv("push", ref), on_line=watch, show=False)
        except CommandError as error:
            raise DockerCommandError(
                f"push of {ref} failed after {layers.done}/{len(layers.states)} layers: {error.message}") from None
    if layers.digest is None:
        raise DockerCommandError(f"push of {ref}: docker reported no digest")
    log.echo(f"pushed {ref}: {len(layers.states)} layers, {layers.digest}")
    return layers.digest


# Layer compression of a push. gzip: `docker push` (every client and daemon pulls it). zstd: skopeo copies
# the image out of the daemon and compresses each layer with zstd (OCI media type, level 3): several times
# faster to decompress, for Docker >= 23, containerd >= 1.5 and the platforms built on them (docs/release.md).
COMPRESSIONS = ("gzip", "zstd")
SKOPEO = "skopeo"


def _skopeo() -> str:
    found = shutil.which(SKOPEO)
    if found is None:
        raise DockerSetupError("push --compression zstd needs skopeo (Debian: apt-get install skopeo)")
    return found


def _skopeo_copy(options: Sequence[str], source: str, dest: str, what: str) -> str:
    """`skopeo copy OPTIONS SOURCE DEST`; the manifest digest the destination now holds (skopeo's --digestfile)."""
    with tempfile.TemporaryDirectory(prefix="imagefactory-skopeo-") as scratch:
        digest_file = Path(scratch) / "digest"
        try:
            run([_skopeo(), "copy", "--quiet", *options, "--digestfile", str(digest_file), source, dest])
        except CommandError as error:
            raise DockerCommandError(f"{what} failed: {error.message}") from None
        digest = digest_file.read_text(encoding="ascii", errors="replace").strip() if digest_file.exists() else ""
    if not re.fullmatch(r"sha256:[0-9a-f]{64}", digest):
        raise DockerCommandError(f"{what}: skopeo reported no digest ({digest[:80]!r})")
    return digest


def copy_to_registry(image_id: str, ref: str, compression: str, *, plain_http: bool) -> str:
    """Push the local image `image_id` (a full sha256 ID) as `ref` with each layer recompressed as
    `compression`, through skopeo; return the manifest digest the registry now holds."""
    if compression not in COMPRESSIONS:
        raise UsageError(f"--compression {compression!r}: want one of {', '.join(COMPRESSIONS)}")
    options = (f"--dest-tls-verify={'false' if plain_http else 'true'}", "--dest-compress-format", compression)
    with log.step(f"pushing {ref} ({compression} layers, skopeo)"):
        return _skopeo_copy(options, f"docker-daemon:{image_id}", f"docker://{ref}", f"push of {ref} ({compression})")


def copy_tag(source_ref: str, ref: str, *, plain_http: bool) -> str:
    """Point the registry tag `ref` at the manifest `source_ref` names, byte for byte (no recompression; an
    image index with every image it lists); return its digest."""
    verify = "false" if plain_http else "true"
    options = ("--all", "--preserve-digests", f"--src-tls-verify={verify}", f"--dest-tls-verify={verify}")
    return _skopeo_copy(options, f"docker://{source_ref}", f"docker://{ref}", f"tagging {ref}")


def push_index(client: DockerClient, ref: str, images: Sequence[str], *, plain_http: bool) -> str:
    """Make `ref` in the registry an image index of `images` (`repo@sha256:…` references already there, one per
    platform; each entry's platform is read from the image's config) with `docker manifest` (it speaks the
    registry with docker's own credentials); return the index's digest."""
    insecure = ["--insecure"] if plain_http else []
    env = {"DOCKER_CLI_EXPERIMENTAL": "enabled"}  # `docker manifest` is marked experimental up to Docker 20.10
    run(client.argv("manifest", "rm", ref), env=env, capture=True, check=False)  # a local list left by a failed run
    try:
        run(client.argv("manifest", "create", *insecure, ref, *images), env=env, capture=True)
        pushed = run(client.argv("manifest", "push", *insecure, "--purge", ref), env=env, capture=True)
    except CommandError as error:
        raise DockerCommandError(f"image index {ref}: {error.message}") from None
    digest = pushed.stdout.strip().splitlines()[-1:] or [""]
    if not re.fullmatch(r"sha256:[0-9a-f]{64}", digest[0]):
        raise DockerCommandError(f"image index {ref}: docker manifest push reported no digest ({digest[0][:80]!r})")
    return digest[0]


def pull(client: DockerClient, ref: str) -> None:
    try:
        run(client.argv("pull", ref))
    except CommandError as error:
        raise DockerCommandError(f"docker pull {ref} failed: {error.message}") from None


def read_file(client: DockerClient, image: str, path: str) -> bytes | None:
    """One file out of an image without running it (create, cp, rm); None when it is not there."""
    created = run(client.argv("create", image, "/none"), capture=True, check=False)
    if not created.ok:
        raise DockerCommandError(
            f"docker create {image[:19]} failed: {created.tail[-1] if created.tail else created.returncode}")
    container = created.stdout.strip()
    try:
        with tempfile.TemporaryDirectory(prefix="imagefactory-read-") as out:
            copied = run(client.argv("cp", f"{container}:{path}", f"{out}/file"), capture=True, check=False)
            return (Path(out) / "file").read_bytes() if copied.ok and (Path(out) / "file").is_file() else None
    finally:
        run(client.argv("rm", container), capture=True, check=False)
def dockerfile_label(key: str, value: str) -> str:
    """One `key="value"` pair of a LABEL instruction: quoted by the Dockerfile rules (backslash, quote and `$`, which the
    builder would substitute, escaped); a newline cannot be in a label line and is refused."""
    if "\n" in value or "\r" in value or not re.fullmatch(r"[a-z0-9.-]+", key):
        raise DockerCommandError(f"label {key!r}: a key of [a-z0-9.-] and a one-line value only")
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("$", "\\$")
    return f'{key}="{escaped}"'


def label_child(client: DockerClient, parent_id: str, labels: Mapping[str, str]) -> str:
    """A child `FROM <parent id>` whose only change is labels (no layer, nothing pulled); returns its ID.
    The labels travel in the Dockerfile, not on the command line (a large value would exceed ARG_MAX).
    Classic builder: it takes `FROM <image id>` from the local store, BuildKit would look in a registry."""
    if not IMAGE_ID.fullmatch(parent_id):
        raise DockerCommandError(f"label child: {parent_id[:80]!r} is not a full image ID")
    with tempfile.TemporaryDirectory(prefix="imagefactory-label-") as context:
        pairs = " \\\n    ".join(dockerfile_label(key, value) for key, value in labels.items())
        (Path(context) / "Dockerfile").write_text(f"FROM {parent_id}\nLABEL {pairs}\n")  # one instruction: one image
        iidfile = Path(context) / "iid"
        try:
            run(client.argv("build", "-q", "--network", "none", "--iidfile", str(iidfile), context),
                env={"DOCKER_BUILDKIT": "0"}, capture=True)
        except CommandError as error:
            raise DockerCommandError(f"labelling {parent_id[:19]}: {error.message}") from None
        image_id = iidfile.read_text().strip() if iidfile.exists() else ""
    if not IMAGE_ID.fullmatch(image_id):
        raise DockerCommandError(f"labelling {parent_id[:19]}: docker build wrote no image ID")
    return image_id


def refs_labelled(client: DockerClient, key: str, value: str) -> list[str]:
    """`repo:tag` names of the local images whose label `key` is `value`."""
    done = run(client.argv("image", "ls", "--no-trunc", "--filter", f"label={key}={value}", "--format", "{{.Repository}}:{{.Tag}}"),
               capture=True, check=False, quiet_echo=True)
    return [line for line in done.stdout.split() if "<none>" not in line] if done.ok else []
