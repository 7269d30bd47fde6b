"""The little of the OCI distribution API that publishing needs: does a tag exist, which digest, which labels.

Plain HTTP (urllib) rather than `docker manifest inspect`: the 20.10 client cannot show an image's
config (its labels), and the registry's answer is the ground truth for "is this tag already taken".
127.0.0.1/localhost registries are spoken to over http, like Docker's insecure-by-default rule; others
over https with an anonymous bearer token when the registry asks for one (public repositories).
"""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass

from imagefactory.errors import PushFailedError

MANIFEST_TYPES = (
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
)
INDEX_TYPES = MANIFEST_TYPES[2:]


@dataclass(frozen=True)
class RepoRef:
    """`host[:port]/name` as given to `--registry` (e.g. `127.0.0.1:5000/imagefactory`)."""

    host: str
    name: str

    @classmethod
    def parse(cls, text: str) -> RepoRef:
        host, _, name = text.strip().rstrip("/").partition("/")
        if not name or ("." not in host and ":" not in host and host != "localhost"):
            raise PushFailedError(f"--registry {text!r}: want host[:port]/name, e.g. 127.0.0.1:5000/imagefactory or ghcr.io/org/images")
        if not re.fullmatch(r"[a-z0-9]+(?:[._-][a-z0-9]+)*(?:/[a-z0-9]+(?:[._-][a-z0-9]+)*)*", name):
            raise PushFailedError(f"--registry {text!r}: repository name {name!r} is not a valid OCI name")
        return cls(host, name)

    def __str__(self) -> str:
        return f"{self.host}/{self.name}"

    @property
    def base_url(self) -> str:
        scheme = "http" if self.host.split(":")[0] in ("127.0.0.1", "localhost") else "https"
        return f"{scheme}://{self.host}/v2/{self.name}"


@dataclass(frozen=True)
class RemoteImage:
    digest: str
    labels: dict[str, str]


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
                    return response.read(), {k.lower(): v for k, v in response.headers.items()}
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
        raise PushFailedError(f"registry {self.repo}: not authorised to read {path}")

    def _anonymous_token(self, challenge: str) -> dict[str, str]:
        fields = dict(re.findall(r'(\w+)="([^"]*)"', challenge))
        query = urllib.parse.urlencode({"service": fields.get("service", ""), "scope": fields.get("scope", f"repository:{self.repo.name}:pull")})
        try:
            with urllib.request.urlopen(f"{fields['realm']}?{query}", timeout=self.timeout) as response:
                token = json.load(response)
        except (urllib.error.URLError, OSError, KeyError, ValueError) as error:
            raise PushFailedError(f"registry {self.repo}: anonymous token refused ({error})") from None
        return {"Authorization": f"Bearer {token.get('token') or token.get('access_token')}"}

    def tags(self) -> list[str]:
        found = self._get("tags/list")
        return list(json.loads(found[0]).get("tags") or []) if found else []

    def image(self, reference: str) -> RemoteImage | None:
        """The manifest digest and config labels behind a tag (or digest); None when absent.
        A multi-platform index is followed to its linux/amd64 entry for the labels."""
        found = self._get(f"manifests/{reference}", MANIFEST_TYPES)
        if found is None:
            return None
        body, headers = found
        digest = headers.get("docker-content-digest", "")
        manifest = json.loads(body)
        if manifest.get("mediaType") in INDEX_TYPES or "manifests" in manifest:
            entries = [m for m in manifest.get("manifests", []) if m.get("platform", {}).get("architecture") == "amd64"]
            if not entries:
                return RemoteImage(digest, {})
            inner = self._get(f"manifests/{entries[0]['digest']}", MANIFEST_TYPES)
            manifest = json.loads(inner[0]) if inner else {}
        config_digest = manifest.get("config", {}).get("digest")
        config = self._get(f"blobs/{config_digest}") if config_digest else None
        labels = (json.loads(config[0]).get("config") or {}).get("Labels") or {} if config else {}
        return RemoteImage(digest, dict(labels))
