"""Docker reference parsing and normalisation, and the resource id derivation.

Follows the grammar of distribution's `reference` package: the first path component is a
registry host when it holds a '.' or ':', is 'localhost' or has an uppercase letter; Docker Hub
names are normalised to `docker.io` with `library/` for one-component names.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

from .errors import ReferenceError_

# Re-exported: callers that already parse names take ids from here too.
from .identifiers import DEFAULT_PLATFORM, ID_RE, blob_id, image_id  # noqa: F401

DOCKER_HUB = "docker.io"
# The names Docker Hub answers to; records and credentials file it under DOCKER_HUB.
DOCKER_HUB_ALIASES = ("docker.io", "index.docker.io", "registry-1.docker.io")
# The platform a reference to a multi-platform index resolves to when none is asked for, as docker pull does.

# distribution's reference grammar, ASCII only. Patterns are used with fullmatch(), never
# match() with `$`, which would accept a trailing newline.
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_PATH_RE = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*", re.ASCII)
_HOST_RE = re.compile(
    r"(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*|\[[0-9a-fA-F:.]+\])(?::[0-9]+)?",
    re.ASCII,
)
TAG_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}", re.ASCII)
# The registered algorithms' digests are lowercase hex of their exact length (OCI image spec,
# go-digest's Validate): `sha256:` and 300 characters, or uppercase hex, names no blob. Others
# follow the grammar alone.
DIGEST_RE = re.compile(
    r"sha256:[a-f0-9]{64}|sha384:[a-f0-9]{96}|sha512:[a-f0-9]{128}"
    r"|(?!sha256:|sha384:|sha512:)[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-zA-Z0-9=_-]{32,}",
    re.ASCII,
)
NAME_MAX = 255  # distribution's NameTotalLengthMax: host and path together
# The algorithms whose digests are checked against the bytes; a digest of any other is refused, not trusted.
DIGEST_ALGORITHMS = ("sha256", "sha384", "sha512")


def is_valid_tag(text) -> bool:
    return isinstance(text, str) and TAG_RE.fullmatch(text) is not None


def is_valid_repository(path) -> bool:
    """A repository path without its host (`library/ubuntu`, `crp1/team/app`)."""
    return isinstance(path, str) and len(path) <= NAME_MAX and _PATH_RE.fullmatch(path) is not None


def is_valid_host(host) -> bool:
    return isinstance(host, str) and _HOST_RE.fullmatch(host) is not None


def is_valid_digest(text) -> bool:
    return isinstance(text, str) and DIGEST_RE.fullmatch(text) is not None


def is_docker_hub(host: str) -> bool:
    return host in DOCKER_HUB_ALIASES


def is_registry_host(component: str) -> bool:
    """Whether the first path component of a name is a registry host (`reg.example/app`) or a path (`team/app`).

    Docker's rule, so that a name means here what it means to docker pull.
    """
    return "." in component or ":" in component or component == "localhost" or component != component.lower()


def is_valid_name(registry: str, path: str) -> bool:
    """A whole repository name: an optional host, a path, and at most NAME_MAX characters together."""
    if isinstance(registry, str) and isinstance(path, str) and len(registry) + 1 + len(path) <= NAME_MAX:
        return _valid_name(registry, path)
    return False


# A run meets the same few repositories in every image it reads: each name is matched once (the
# cache holds at most 4096 names of up to NAME_MAX characters).
@functools.lru_cache(maxsize=4096)
def _valid_name(registry: str, path: str) -> bool:
    return is_valid_repository(path) and (not registry or is_valid_host(registry))


# Up to the last '@' before the path: a password may hold '@' or ':' and must not leak a part.
# An '@' that starts a digest, or what is meant for one (`@sha256:abc`, a known algorithm's
# name), is none of that; nor is an '@' that ends the URL, with no host after it.
_DIGEST_AFTER_AT = re.compile(
    r"""@(?:[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-zA-Z0-9=_-]{32,}|sha(?:256|384|512):|[)\]>'",.:]*$)"""
)


_URL_REST = re.compile(r"(?<=://)\S+")
# A URL whose scheme a message left out: skopeo's names split at the first ':', so the path of
# `docker-archive:http://u:p@host/x.tar` is `http` and its reference `//u:p@host/x.tar`.
_SCHEMELESS_URL = re.compile(r"(?:^|(?<=[\s'\"(\[=]))//\S+")


# Query parameters whose values say nothing secret: the distribution API's paging and the token
# request's own. Any other value may be a credential (`access_token=`, `X-Amz-Signature=`, `sig=`).
_PLAIN_QUERY_KEYS = frozenset({"n", "last", "service", "scope", "account"})
_QUERY_VALUE = re.compile(r"([?&;])([^=&;#'\"]*)=([^&;#'\"]*)")
# What a message may put right after a URL, kept out of the value that is hidden.
_CLOSING = ")]>'\",.:"


def _hidden_value(match: re.Match) -> str:
    key, value = match.group(2), match.group(3)
    if not value or key.lower() in _PLAIN_QUERY_KEYS:
        return match.group()
    return f"{match.group(1)}{key}=***"


# A login name as ssh:// addresses carry it (ssh://me@build-host): what ssh is handed as the user,
# and no secret, so messages keep it (it tells one engine from another); anything else before an
# ssh host's '@' is hidden.
SSH_LOGIN = re.compile(r"[A-Za-z0-9_.-]+")


def _hide_secrets(match: re.Match) -> str:
    local = match.string.endswith(("unix", "npipe"), 0, match.start() - 3)  # a path: an '@' in it is no userinfo
    return _hidden(match.group(), local, match.string.endswith("ssh", 0, match.start() - 3))


def _hidden(rest: str, local: bool = False, ssh: bool = False) -> str:
    ends = [i for i, c in enumerate(rest) if c == "@" and not _DIGEST_AFTER_AT.match(rest, i)]
    if ends and not local and not (ssh and SSH_LOGIN.fullmatch(rest, 0, ends[-1])):
        rest = "***" + rest[ends[-1] :]
    query = rest.find("?")
    if query < 0:
        return rest
    url = rest.rstrip(_CLOSING)
    return rest[:query] + _QUERY_VALUE.sub(_hidden_value, url[query:]) + rest[len(url) :]


def redact_url_secrets(text: str) -> str:
    """`docker://alice:secret@host/app` -> `docker://***@host/app`, and `?access_token=T` ->
    `?access_token=***`: credentials never reach logs or the store.

    In each URL of `text`, the hidden userinfo ends at the last '@' that does not start a digest,
    so a password holding '/' or '@' is hidden whole and `docker://app@sha256:...` is left as it
    is. Query values are hidden but for the few keys known to hold nothing secret.
    """
    if "//" not in text:
        return text
    if "://" in text:
        text = _URL_REST.sub(_hide_secrets, text)
    return _SCHEMELESS_URL.sub(lambda match: "//" + _hidden(match.group()[2:]), text)


@dataclass(frozen=True)
class Reference:
    registry: str
    name: str  # repository path without the registry host
    tag: str = ""
    digest: str = ""

    def __str__(self) -> str:
        out = f"{self.registry}/{self.name}"
        if self.tag:
            out += f":{self.tag}"
        if self.digest:
            out += f"@{self.digest}"
        return out


def _split_host(remainder: str) -> tuple[str, str]:
    first, sep, rest = remainder.partition("/")
    if sep and is_registry_host(first):
        return first, rest
    return "", remainder


def parse_reference(text: str, default_registry: str = DOCKER_HUB) -> Reference:
    """Parse `[HOST/]NAME[:TAG][@DIGEST]`; raises ReferenceError_ on anything else."""
    if not isinstance(text, str) or not text or len(text) > 4096:
        raise ReferenceError_(f"invalid reference {text!r}")
    remainder, at, digest = text.partition("@")
    if at and not is_valid_digest(digest):  # `name@` too: docker's grammar has no empty digest
        raise ReferenceError_(f"invalid digest in reference {text!r}")
    host, path = _split_host(remainder)
    tag = ""
    slash = path.rfind("/")
    colon = path.rfind(":")
    if colon > slash:
        path, tag = path[:colon], path[colon + 1 :]
        if not is_valid_tag(tag):
            raise ReferenceError_(f"invalid tag in reference {text!r}")
    registry = host or default_registry
    name = path
    if is_docker_hub(registry):
        registry = DOCKER_HUB
        if "/" not in name:
            name = f"library/{name}"
    # As distribution does, the length limit applies to the normalised name, host included. A
    # path is valid with "library/" before it exactly when it is valid alone.
    if not is_valid_name(registry, name):
        if host and not is_valid_host(host):
            raise ReferenceError_(f"invalid registry host in reference {text!r}")
        raise ReferenceError_(f"invalid repository name in reference {text!r}")
    return Reference(registry=registry, name=name, tag=tag, digest=digest)


def is_bare_tag(text: str) -> bool:
    """True for an OCI `ref.name` that is only a tag (`v1`), not a reference."""
    return is_valid_tag(text)
