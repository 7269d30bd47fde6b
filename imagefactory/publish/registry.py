"""The little of the OCI distribution API that publishing needs: does a tag exist, which digest, which labels.

Plain HTTP (urllib) rather than `docker manifest inspect`: the 20.10 client cannot show an image's
config (its labels), and the registry's answer is the ground truth for "is this tag already taken".
127.0.0.1/localhost registries are spoken to over http, like Docker's insecure-by-default rule; others
over https with an anonymous bearer token when the registry asks for one (public repositories).
"""

from __future__ import annotations

import http.client
import json
import re
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass

from imagefactory.errors import PushFailedError, UsageError

MANIFEST_TYPES = (
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
)
INDEX_TYPES = MANIFEST_TYPES[2:]
# `host[:port]`: DNS labels or an IPv4 address, a port of 1-5 digits; no spaces, `#`, `?`, `@` or scheme.
HOST = re.compile(r"(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)*(?::[0-9]{1,5})?", re.ASCII)
NAME = re.compile(r"[a-z0-9]+(?:[._-][a-z0-9]+)*(?:/[a-z0-9]+(?:[._-][a-z0-9]+)*)*", re.ASCII)
MAX_ANSWER = 16 * 1024 * 1024  # a manifest or image config; more is not an answer to our question
DIGEST = re.compile(r"sha256:[0-9a-f]{64}", re.ASCII)


@dataclass(frozen=True)
class RepoRef:
    """`host[:port]/name` as given to `--registry` (e.g. `127.0.0.1:5000/imagefactory`)."""

    host: str
    name: str

    @classmethod
    def parse(cls, text: str) -> RepoRef:
        """Checked in full (fullmatch, ASCII): the host and name end up in URLs and `docker push` arguments."""
        host, _, name = text.rstrip("/").partition("/")
        want = "want host[:port]/name, e.g. 127.0.0.1:5000/imagefactory or ghcr.io/org/images"
        if not name or ("." not in host and ":" not in host and host != "localhost"):
            raise UsageError(f"--registry {text!r}: {want}")
        port = host.partition(":")[2]
        if not HOST.fullmatch(host) or (port and not 0 < int(port) < 65536):
            raise UsageError(f"--registry {text!r}: host {host!r} is not a host[:port] ({want})")
        if not NAME.fullmatch(name) or len(name) > 255:
            raise UsageError(f"--registry {text!r}: repository name {name!r} is not a valid OCI name (lower case, digits, . _ - /)")
        return cls(host, name)

    def __str__(self) -> str:
        return f"{self.host}/{self.name}"

    @property
    def plain_http(self) -> bool:
        """A registry on this machine speaks http (Docker's insecure-by-default rule); others https."""
        return self.host.split(":")[0] in ("127.0.0.1", "localhost")

    @property
    def base_url(self) -> str:
        return f"{'http' if self.plain_http else 'https'}://{self.host}/v2/{self.name}"


@dataclass(frozen=True)
class RemoteImage:
    digest: str
    labels: dict[str, str]
    platforms: tuple[str, ...] = ()  # an image index: its entries' `os/architecture`, sorted; () for one image


class Registry:
    """Read-only client for one repository."""

    def __init__(self, repo: RepoRef, timeout: float = 30.0) -> None:
        self.repo = repo
        self.timeout = timeout
        self._auth: dict[str, str] = {}

    def _get(self, path: str, accept: tuple[str, ...] = ()) -> tuple[bytes, dict[str, str]] | None:
        """GET below /v2/<name>/; None on 404; PushFailedError on anything else that is not 200."""
        url = f"{self.repo.base_url}/{path}"
        for _attempt in range(2):
            headers = {**self._auth, **({"Accept": ", ".join(accept)} if accept else {})}
            try:
                with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=self.timeout) as response:
                    body = response.read(MAX_ANSWER + 1)
                    if len(body) > MAX_ANSWER:
                        raise PushFailedError(f"registry {self.repo}: GET {path}: answer larger than {MAX_ANSWER // 2**20} MiB")
                    length = response.headers.get("Content-Length")
                    if length is not None and length.isdigit() and len(body) != int(length):
                        raise PushFailedError(f"registry {self.repo}: GET {path}: broken HTTP answer (cut short at {len(body)} of {length} bytes)")
                    return body, {k.lower(): v for k, v in response.headers.items()}
            except urllib.error.HTTPError as error:
                if error.code == 404:
                    return None
                challenge = error.headers.get("WWW-Authenticate", "")
                if error.code == 401 and not self._auth and challenge.startswith("Bearer "):
                    self._auth = self._anonymous_token(challenge)
                    continue
                raise PushFailedError(f"registry {self.repo}: GET {path} → HTTP {error.code}") from None
            except (urllib.error.URLError, OSError) as error:
                raise PushFailedError(f"registry {self.repo}: cannot reach {self.repo.host} ({getattr(error, 'reason', error)})") from None
            except http.client.HTTPException as error:  # not HTTP at all, or a body cut short (IncompleteRead)
                raise PushFailedError(f"registry {self.repo}: GET {path}: broken HTTP answer ({type(error).__name__})") from None
        raise PushFailedError(f"registry {self.repo}: not authorised to read {path}")

    def _anonymous_token(self, challenge: str) -> dict[str, str]:
        fields = dict(re.findall(r'(\w+)="([^"]*)"', challenge))
        query = urllib.parse.urlencode({"service": fields.get("service", ""), "scope": fields.get("scope", f"repository:{self.repo.name}:pull")})
        try:
            with urllib.request.urlopen(f"{fields['realm']}?{query}", timeout=self.timeout) as response:
                token = json.loads(response.read(MAX_ANSWER))
        except (urllib.error.URLError, OSError, KeyError, ValueError, RecursionError, http.client.HTTPException) as error:
            raise PushFailedError(f"registry {self.repo}: anonymous token refused ({type(error).__name__})") from None
        value = (token.get("token") or token.get("access_token")) if isinstance(token, dict) else None
        if not isinstance(value, str) or not value.isprintable():
            raise PushFailedError(f"registry {self.repo}: the token answer holds no token")
        return {"Authorization": f"Bearer {value}"}

    def _json(self, found: tuple[bytes, dict[str, str]], path: str) -> dict:
        """A JSON object from the registry, or one PushFailedError line (HTML, a list, a cut-off body)."""
        try:
            data = json.loads(found[0])
        except (ValueError, RecursionError):
            start = found[0][:40].decode("utf-8", "replace").strip().splitlines()
            raise PushFailedError(f"registry {self.repo}: GET {path}: not JSON (starts {start[0][:40] if start else 'empty'!r})") from None
        if not isinstance(data, dict):
            raise PushFailedError(f"registry {self.repo}: GET {path}: expected a JSON object, got {type(data).__name__}")
        return data

    def tags(self) -> list[str]:
        found = self._get("tags/list")
        if not found:
            return []
        listed = self._json(found, "tags/list").get("tags") or []
        if not isinstance(listed, list) or not all(isinstance(tag, str) for tag in listed):
            raise PushFailedError(f"registry {self.repo}: GET tags/list: 'tags' is not a list of strings")
        return listed

    def image(self, reference: str) -> RemoteImage | None:
        """The manifest digest and config labels behind a tag (or digest); None when absent.
        A multi-platform index is followed to its linux/amd64 entry for the labels. Every answer is
        checked for shape: a registry that answers nonsense is one PushFailedError line."""
        path = f"manifests/{reference}"
        found = self._get(path, MANIFEST_TYPES)
        if found is None:
            return None
        digest = found[1].get("docker-content-digest", "")
        if not DIGEST.fullmatch(digest):
            raise PushFailedError(f"registry {self.repo}: GET {path}: no sha256 Docker-Content-Digest header")
        manifest = self._json(found, path)
        if manifest.get("mediaType") in INDEX_TYPES or "manifests" in manifest:
            entries = manifest.get("manifests")
            if not isinstance(entries, list):
                raise PushFailedError(f"registry {self.repo}: GET {path}: index without a 'manifests' list")
            platformed = [m for m in entries if isinstance(m, dict) and isinstance(m.get("platform"), dict)
                          and DIGEST.fullmatch(str(m.get("digest", "")))]
            platforms = tuple(sorted(f"{str(m['platform'].get('os'))[:20]}/{str(m['platform'].get('architecture'))[:20]}"
                                     for m in platformed))
            amd64 = [m for m in platformed if m["platform"].get("architecture") == "amd64"]
            if not amd64:
                return RemoteImage(digest, {}, platforms)
            inner_path = f"manifests/{amd64[0]['digest']}"
            inner = self._get(inner_path, MANIFEST_TYPES)
            manifest = self._json(inner, inner_path) if inner else {}
        else:
            platforms = ()
        config_ref = manifest.get("config")
        config_digest = config_ref.get("digest") if isinstance(config_ref, dict) else None
        if config_digest is None:
            return RemoteImage(digest, {}, platforms)
        if not isinstance(config_digest, str) or not DIGEST.fullmatch(config_digest):
            raise PushFailedError(f"registry {self.repo}: GET {path}: config digest {str(config_digest)[:80]!r} is not sha256")
        config = self._get(f"blobs/{config_digest}")
        body = self._json(config, f"blobs/{config_digest}") if config else {}
        labels = (body.get("config") or {}).get("Labels") if isinstance(body.get("config") or {}, dict) else None
        if not isinstance(labels or {}, dict) or not all(isinstance(v, str) for v in (labels or {}).values()):
            raise PushFailedError(f"registry {self.repo}: GET blobs/{config_digest}: labels are not strings")
        return RemoteImage(digest, dict(labels or {}), platforms)
