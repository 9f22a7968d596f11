"""The engine the docker CLI talks to when DOCKER_HOST is unset: its current context.

`docker context use NAME` (Docker Desktop, rootless Docker, colima all set one) records the name
as `currentContext` in `$DOCKER_CONFIG/config.json` (`~/.docker`); `DOCKER_CONTEXT` overrides it
and DOCKER_HOST overrides both, as in the CLI. A context other than `default` keeps its engine
address in `contexts/meta/SHA256(NAME)/meta.json` (`Endpoints.docker.Host`, `SkipTLSVerify`) and
its TLS files, when it has any, in `contexts/tls/SHA256(NAME)/docker/{ca,cert,key}.pem`.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from ..errors import SourceError, printable
from ..files import read_small

DEFAULT_CONTEXT = "default"
# config.json and meta.json are a few hundred bytes; past this, a file is not one the CLI wrote.
MAX_FILE_BYTES = 1 << 20


@dataclass(frozen=True)
class EngineContext:
    """A docker context's engine: its address, and the TLS settings its files give, in the form of
    the DOCKER_TLS_VERIFY and DOCKER_CERT_PATH variables (see daemon.tls_from_env)."""

    name: str
    host: str
    environ: dict[str, str] = field(default_factory=dict)


def docker_config_dir(environ: Mapping[str, str]) -> str:
    """Where the docker CLI keeps config.json and its contexts: $DOCKER_CONFIG, else ~/.docker."""
    return environ.get("DOCKER_CONFIG") or os.path.join(environ.get("HOME") or os.path.expanduser("~"), ".docker")


def current_context(environ: Mapping[str, str] | None = None) -> EngineContext | None:
    """The current context's engine, or None for the `default` context (DOCKER_HOST, else the
    local socket). SourceError, in one line, for a context named that does not exist or whose
    files cannot be read."""
    environ = os.environ if environ is None else environ
    if environ.get("DOCKER_HOST"):
        return None
    folder = docker_config_dir(environ)
    name = environ.get("DOCKER_CONTEXT") or _configured(os.path.join(folder, "config.json"))
    if not name or name == DEFAULT_CONTEXT:
        return None
    key = hashlib.sha256(name.encode()).hexdigest()
    meta_path = os.path.join(folder, "contexts", "meta", key, "meta.json")
    origin = "DOCKER_CONTEXT" if environ.get("DOCKER_CONTEXT") else "the currentContext of config.json"
    doc = _read_json(meta_path, f"docker context {printable(name)!r} (named by {origin}) does not exist")
    endpoints = doc.get("Endpoints") if isinstance(doc, dict) else None
    endpoint = endpoints.get("docker") if isinstance(endpoints, dict) else None
    host = endpoint.get("Host") if isinstance(endpoint, dict) else None
    if not isinstance(host, str) or not host:
        raise SourceError(
            printable(meta_path), f"docker context {printable(name)!r} names no engine (Endpoints.docker.Host)"
        )
    # As the CLI: TLS when the context keeps TLS files or skips verification, verified unless it
    # skips it (DOCKER_CERT_PATH alone is TLS without verification, for daemon.tls_from_env).
    tls_folder = os.path.join(folder, "contexts", "tls", key, "docker")
    has_files, skip = os.path.isdir(tls_folder), endpoint.get("SkipTLSVerify") is True
    tls = {}
    if has_files or skip:
        tls["DOCKER_CERT_PATH"] = tls_folder
    if has_files and not skip:
        tls["DOCKER_TLS_VERIFY"] = "1"
    return EngineContext(name, host, tls)


def _configured(path: str) -> str:
    """config.json's `currentContext` ("" when the file or the key is absent, as for the CLI)."""
    doc = _read_json(path, "")
    value = doc.get("currentContext") if isinstance(doc, dict) else None
    return value if isinstance(value, str) else ""


def _read_json(path: str, missing: str) -> object:
    """The JSON document at `path`; None when it is absent and `missing` is "", else SourceError
    saying `missing`. Any other failure is SourceError naming the file."""
    where = printable(path)
    try:
        data = read_small(path, MAX_FILE_BYTES, os.path.basename(path))
    except FileNotFoundError:
        if missing:
            raise SourceError(where, missing) from None
        return None
    except OSError as exc:
        raise SourceError(where, exc.strerror or str(exc)) from None
    try:
        return json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise SourceError(where, f"not JSON ({exc})") from None
