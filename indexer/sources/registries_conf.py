"""registries.conf as skopeo and podman read it (containers-registries.conf(5)): which registries
are blocked, which are insecure, and which host serves a registry's images.

The files are those containers/image reads: `--registries-conf`, else CONTAINERS_REGISTRIES_CONF
or REGISTRIES_CONFIG_PATH, else `~/.config/containers/registries.conf` if it exists (with only
the drop-ins beside it), else `/etc/containers/registries.conf` (it may be missing) with the
drop-ins of `/etc/containers/registries.conf.d` and then the user's. A drop-in's `[[registry]]`
replaces the one of the same prefix; inside one file the first of a prefix wins.

Mirrors are tried for one image (a tag or a digest), as containers/image pulls it; tag lists and
catalogs are the registry's own. Short names, aliases and credential helpers do not apply to
`docker://` references."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field

from ..errors import SourceError, printable
from ..files import read_small
from .tomlfile import MAX_FILE_BYTES as MAX_CONF_BYTES
from .tomlfile import TomlRefused, loads

SYSTEM_FILE = "/etc/containers/registries.conf"
SYSTEM_DIR = "/etc/containers/registries.conf.d"
_USER_FILE = os.path.join(".config", "containers", "registries.conf")
_USER_DIR = os.path.join(".config", "containers", "registries.conf.d")
# Drop-ins a folder may hold, and bytes all the files may add up to, before they are refused:
# each is read whole and parsed, at up to 1.5 s for 256 KiB built to cost the most.
MAX_DROP_INS = 1000
MAX_TOTAL_BYTES = 1024 * 1024


@dataclass(frozen=True)
class RegistryEntry:
    """One `[[registry]]` table, or a v1 `[registries.insecure]` / `[registries.block]` host."""

    prefix: str
    location: str
    insecure: bool = False
    blocked: bool = False
    origin: str = ""  # the file it came from, for messages
    mirrors: tuple[Mirror, ...] = ()
    mirror_by_digest_only: bool = False

    def pull_sources(self, digested: bool) -> list[RegistryEntry]:
        """Where one image is pulled from, in order, as containers/image's PullSourcesFromReference:
        the mirrors its settings allow for a reference by digest or by tag, then the registry."""
        allowed = {"": True, "all": True, "digest-only": digested, "tag-only": not digested}
        mirrors = [
            RegistryEntry(self.prefix, mirror.location, mirror.insecure, origin=self.origin)
            for mirror in self.mirrors
            if (digested if self.mirror_by_digest_only else allowed[mirror.pull_from_mirror])
        ]
        return [*mirrors, self]


@dataclass(frozen=True)
class Mirror:
    location: str
    insecure: bool = False
    pull_from_mirror: str = ""  # '', 'all', 'digest-only' or 'tag-only'


@dataclass(frozen=True)
class RegistriesConf:
    entries: tuple[RegistryEntry, ...] = ()  # in prefix order, one per prefix
    files: tuple[str, ...] = field(default=())  # every file read, for messages
    _by_prefix: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._by_prefix.update((entry.prefix, entry) for entry in self.entries)

    def find(self, name: str) -> RegistryEntry | None:
        """The entry with the longest prefix matching `name` (a host, `host/namespace` or
        `host/repository`), as containers/image's FindRegistry: the first in prefix order of the
        longest. A catalog asks once per repository, so the prefixes that could match are looked
        up rather than every entry tried."""
        found = [entry for entry in map(self._by_prefix.get, _candidates(name)) if entry is not None]
        if not found:
            return None
        return min(found, key=lambda entry: (-len(entry.prefix), entry.prefix))


def _candidates(name: str) -> Iterator[str]:
    """Every prefix that could match `name`: the name cut at a `:`, `/` or `@`, or whole; and the
    wildcards `*.DOMAIN` whose DOMAIN first occurs in the host part at a `.` and ends at one."""
    ends = [end for end, char in enumerate(name) if char in ":/@"] + [len(name)]
    for end in ends:
        yield name[:end]
    host_end = name.find("/")
    host_end = len(name) if host_end == -1 else host_end
    host_ends = [end for end in ends if end <= host_end]  # a wildcard holds no '/'
    for start, char in enumerate(name[:host_end]):
        if char == ".":
            for end in host_ends:
                if end > start + 1 and name.find(name[start:end]) == start:
                    yield "*" + name[start:end]


def match_end(name: str, prefix: str) -> int:
    """Where in `name` the part `prefix` matches ends, or -1 (containers/image's refMatchingPrefix)."""
    if prefix.startswith("*."):
        # `*.example.com`: any host under example.com, the wildcard only in the host
        at = name.find(prefix[1:])
        if at == -1 or "/" in name[:at]:
            return -1
        end = at + len(prefix) - 1
    elif name.startswith(prefix):
        end = len(prefix)
    else:
        return -1
    return end if end == len(name) or name[end] in ":/@" else -1


def rewritten(entry: RegistryEntry, name: str) -> str:
    """`name` (which the entry's prefix matches) as the entry's location serves it: the location
    in place of the part the prefix matched, as containers/image rewrites a reference."""
    if not entry.location:
        return name  # a wildcard prefix without a location only sets what it says
    return entry.location + name[match_end(name, entry.prefix) :]


def config_files(explicit: str = "", env: dict | None = None) -> tuple[str, list[str], bool]:
    """(the main file, the drop-in folders in order, whether the main file must exist)."""
    env = os.environ if env is None else env
    home = env.get("HOME") or os.path.expanduser("~")
    system_dirs = [SYSTEM_DIR, os.path.join(home, _USER_DIR)]
    chosen = explicit or env.get("CONTAINERS_REGISTRIES_CONF") or env.get("REGISTRIES_CONFIG_PATH") or ""
    if chosen:
        return chosen, system_dirs, True
    user = os.path.join(home, _USER_FILE)
    if os.path.lexists(user):
        return user, [os.path.join(home, _USER_DIR)], True
    return SYSTEM_FILE, system_dirs, False


def load_once(explicit: str = "") -> RegistriesConf:
    """`load` for this process's environment, read once for all the registry sources of a run
    (as containers/image keeps what it read); a file that cannot be used is tried again."""
    env = os.environ
    key = (explicit, *(env.get(name) for name in ("CONTAINERS_REGISTRIES_CONF", "REGISTRIES_CONFIG_PATH", "HOME")))
    conf = _loaded.get(key)
    if conf is None:
        conf = _loaded[key] = load(explicit)
    return conf


_loaded: dict[tuple, RegistriesConf] = {}


def load(explicit: str = "", env: dict | None = None) -> RegistriesConf:
    """The merged configuration; SourceError naming the file and the reason for one that cannot
    be read or says something containers/image would refuse."""
    main, dirs, required = config_files(explicit, env)
    files: list[str] = []
    by_prefix: dict[str, RegistryEntry] = {}
    try:
        data = read_small(main, MAX_CONF_BYTES, "registries.conf")
    except FileNotFoundError:
        if required:
            raise SourceError(printable(main), "no such registries.conf") from None
    except OSError as exc:
        raise SourceError(printable(main), f"cannot read it: {exc.strerror or exc}") from None
    else:
        files.append(main)
        for entry in parse(data, main, drop_in=False):
            by_prefix.setdefault(entry.prefix, entry)
    total = len(data) if files else 0
    for folder in dirs:
        for path in _drop_ins(folder):
            try:
                data = read_small(path, MAX_CONF_BYTES, "registries.conf drop-in")
            except FileNotFoundError:
                continue  # removed since the listing, as containers/image allows
            except OSError as exc:
                raise SourceError(printable(path), f"cannot read it: {exc.strerror or exc}") from None
            total += len(data)
            if total > MAX_TOTAL_BYTES:
                raise SourceError(printable(path), f"the registries.conf files add up to over {MAX_TOTAL_BYTES} bytes")
            files.append(path)
            seen: set[str] = set()
            for entry in parse(data, path, drop_in=True):
                if entry.prefix not in seen:
                    seen.add(entry.prefix)
                    by_prefix[entry.prefix] = entry
    return RegistriesConf(tuple(by_prefix[p] for p in sorted(by_prefix)), tuple(files))


def _drop_ins(folder: str) -> list[str]:
    try:
        with os.scandir(folder) as listing:
            names = []
            for item in listing:
                if item.name.endswith(".conf") and not item.is_dir():
                    names.append(item.name)
                    if len(names) > MAX_DROP_INS:
                        raise SourceError(printable(folder), f"more than {MAX_DROP_INS} drop-in files")
    except (FileNotFoundError, NotADirectoryError):
        return []
    except OSError as exc:
        raise SourceError(printable(folder), f"cannot list it: {exc.strerror or exc}") from None
    return [os.path.join(folder, name) for name in sorted(names)]


def parse(data: bytes, origin: str, drop_in: bool = False) -> list[RegistryEntry]:
    """The registry entries of one file, checked as containers/image checks them."""

    def fail(reason: str) -> SourceError:
        return SourceError(printable(origin), reason)

    try:
        doc = loads(data, "registries.conf")
    except TomlRefused as exc:
        raise fail(str(exc)) from None
    v1 = doc.get("registries")
    v2 = doc.get("registry")
    if v1 is not None:
        if drop_in:
            raise fail("a drop-in must be in the version 2 format, and this one has a [registries] table")
        if v2 is not None or any(key in doc for key in _V2_KEYS):
            raise fail("mixing the version 1 ([registries]) and version 2 formats is not supported")
        return _v1_entries(v1, origin, fail)
    if v2 is None:
        return []
    if not isinstance(v2, list):
        raise fail("`registry` must be an array of tables ([[registry]])")
    entries = []
    for number, table in enumerate(v2, 1):
        if not isinstance(table, dict):
            raise fail(f"registry entry {number} is not a table")
        entries.append(_v2_entry(table, number, origin, fail))
    _check_conflicts(entries, fail)
    return entries


_V2_KEYS = (
    "unqualified-search-registries",
    "short-name-mode",
    "credential-helpers",
    "aliases",
    "additional-layer-store-auth-helper",
)


def _text(table: dict, key: str, where: str, fail) -> str:
    value = table.get(key, "")
    if not isinstance(value, str):
        raise fail(f"{where}: `{key}` is not a string")
    return value


def _flag(table: dict, key: str, where: str, fail) -> bool:
    value = table.get(key, False)
    if not isinstance(value, bool):
        raise fail(f"{where}: `{key}` is not true or false")
    return value


def _location(value: str, where: str, fail) -> str:
    trimmed = value.rstrip("/")
    if trimmed.startswith(("http://", "https://")):
        raise fail(f"{where}: invalid location {printable(value)!r}: URI schemes are not supported")
    return trimmed


def _v2_entry(table: dict, number: int, origin: str, fail) -> RegistryEntry:
    where = f"registry entry {number}"
    location = _location(_text(table, "location", where, fail), where, fail)
    prefix = _location(_text(table, "prefix", where, fail), where, fail)
    if not prefix:
        if not location:
            raise fail(f"{where}: both location and prefix are unset")
        prefix = location
    elif not location and not prefix.startswith("*."):
        raise fail(f"{where}: location is unset and prefix is not in the format *.example.com")
    if prefix.startswith("*.") and any(char in prefix for char in "/@:"):
        raise fail(f"{where}: a wildcard prefix must be in the format *.example.com, not {printable(prefix)!r}")
    mirrors = table.get("mirror", [])
    if not isinstance(mirrors, list) or not all(isinstance(m, dict) for m in mirrors):
        raise fail(f"{where}: `mirror` must be an array of tables ([[registry.mirror]])")
    if "pull-from-mirror" in table:
        raise fail(f"{where}: pull-from-mirror is a mirror's setting, not the registry's")
    by_digest_only = _flag(table, "mirror-by-digest-only", where, fail)
    found = []
    for mirror in mirrors:
        mirror_where = f"{where}, a mirror"
        mirror_location = _location(_text(mirror, "location", mirror_where, fail), where, fail)
        if not mirror_location:
            raise fail(f"{where}: a mirror's location is unset")
        pull = _text(mirror, "pull-from-mirror", mirror_where, fail)
        if pull not in ("", "all", "digest-only", "tag-only"):
            raise fail(f"{mirror_where}: unsupported pull-from-mirror value {printable(pull)!r}")
        if pull and by_digest_only:
            raise fail(f"{where}: mirror-by-digest-only and a mirror's pull-from-mirror cannot both be set")
        found.append(Mirror(mirror_location, _flag(mirror, "insecure", mirror_where, fail), pull))
    return RegistryEntry(
        prefix=prefix,
        location=location,
        insecure=_flag(table, "insecure", where, fail),
        blocked=_flag(table, "blocked", where, fail),
        origin=origin,
        mirrors=tuple(found),
        mirror_by_digest_only=by_digest_only,
    )


def _v1_entries(v1: object, origin: str, fail) -> list[RegistryEntry]:
    if not isinstance(v1, dict):
        raise fail("`registries` must be a table")
    flags: dict[str, dict[str, bool]] = {}
    for kind in ("block", "insecure"):
        section = v1.get(kind, {})
        hosts = section.get("registries", []) if isinstance(section, dict) else None
        if not isinstance(hosts, list) or not all(isinstance(host, str) for host in hosts):
            raise fail(f"[registries.{kind}] registries must be an array of strings")
        for host in hosts:
            location = _location(host, f"[registries.{kind}]", fail)
            flags.setdefault(location, {})[kind] = True
    return [
        RegistryEntry(location, location, set_.get("insecure", False), set_.get("block", False), origin)
        for location, set_ in flags.items()
    ]


def _check_conflicts(entries: list[RegistryEntry], fail) -> None:
    seen: dict[str, RegistryEntry] = {}
    for entry in entries:
        key = entry.location or entry.prefix
        other = seen.setdefault(key, entry)
        for setting in ("insecure", "blocked"):
            if getattr(other, setting) != getattr(entry, setting):
                conflict = f"conflicting {setting!r} settings"
                raise fail(f"registry {printable(key)!r} is defined more than once with {conflict}")
