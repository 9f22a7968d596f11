"""The Image.Get documents an archive must give, built from expected.json alone.

expected.json records what the real tools wrote and what the registry served; this module
turns those facts into the exact response documents, independently of the indexer's parser.
"""

from __future__ import annotations

from indexer.references import blob_id, image_id, is_bare_tag, parse_reference
from indexer.timestamps import normalise

REPOSITORY = "fixtures/app"  # --repository for images whose source carries no name


def _blob(digest: str, size: int) -> dict:
    out = {"id": blob_id(digest), "digest": digest}
    if size:
        out["size"] = str(size)
    return out


def _doc(registry, name, digest, config, layers, tags, created) -> dict:
    key = digest or config["digest"]
    out = {"id": image_id(registry, name, key)}
    if name:
        out["name"] = name
    if digest:
        out["digest"] = digest
    total = sum(layer["size"] for layer in layers)
    if total:
        out["compressedSize"] = str(total)
    if config:
        out["config"] = _blob(config["digest"], config["size"])
    if layers:
        out["layers"] = [_blob(layer["digest"], layer["size"]) for layer in layers]
    if tags:
        out["tags"] = sorted(tags)
    if created:
        out["createdAt"] = normalise(created)
    return out


def _names(references) -> dict[tuple[str, str], set[str]]:
    groups: dict[tuple[str, str], set[str]] = {}
    for text in references:
        ref = parse_reference(text)
        groups.setdefault((ref.registry, ref.name), set()).add(ref.tag)
    return groups or {("", REPOSITORY): set()}


def _classic(image: dict) -> list[dict]:
    config = {"digest": image["image_id"], "size": image["config_size"]}
    return [
        _doc(registry, name, "", config, image["layers"], tags, image["created"])
        for (registry, name), tags in _names(image["repo_tags"] or []).items()
    ]


def _walk(manifests: dict, digest: str, groups, out: dict) -> None:
    manifest = manifests[digest]
    for (registry, name), tags in groups.items():
        key = (registry, name, digest)
        if manifest["kind"] == "index":
            doc = _doc(registry, name, digest, None, [], tags, None)
        else:
            doc = _doc(registry, name, digest, manifest["config"], manifest["layers"], tags, manifest.get("created"))
        if key in out:
            merged = sorted(set(out[key].get("tags", [])) | set(doc.get("tags", [])))
            doc = dict(out[key], **({"tags": merged} if merged else {}))
        out[key] = doc
    for child in manifest.get("manifests", []):
        if child["digest"] in manifests:
            _walk(manifests, child["digest"], {k: set() for k in groups}, out)


def expected_documents(entry: dict) -> list[dict]:
    """Every resource an archive (one entry of expected.json's `archives`) must yield, sorted by id."""
    out: dict = {}
    descriptors = (entry.get("index") or {}).get("manifests") or []
    covered = set()
    if descriptors:
        tags_by_config = {}
        for image in entry.get("images", []):
            tags_by_config.setdefault(image["image_id"], []).extend(image["repo_tags"] or [])
        for descriptor in descriptors:
            annotations = descriptor.get("annotations") or {}
            references = []
            full = annotations.get("io.containerd.image.name")
            ref_name = annotations.get("org.opencontainers.image.ref.name")
            if full:
                references.append(full)
            elif ref_name and not is_bare_tag(ref_name):
                references.append(ref_name)
            manifest = entry["manifests"][descriptor["digest"]]
            if manifest["kind"] == "image":
                references += tags_by_config.get(manifest["config"]["digest"], [])
                covered.add(manifest["config"]["digest"])
            groups = _names(references) if references else {("", REPOSITORY): set()}
            if ref_name and is_bare_tag(ref_name) and not full:
                groups.setdefault(("", REPOSITORY), set()).add(ref_name)
            _walk(entry["manifests"], descriptor["digest"], groups, out)
    for image in entry.get("images", []):
        if image["image_id"] not in covered:
            for doc in _classic(image):
                out[(doc["id"],)] = doc
    return sorted(out.values(), key=lambda d: d["id"])


def registry_facts(expected: dict) -> dict[str, dict]:
    """Manifest digest -> what the registry served for it (config, layers, created, tags by repo)."""
    facts = {}
    for repository, served in expected["registry"]["repositories"].items():
        for digest, manifest in served["manifests"].items():
            fact = facts.setdefault(digest, dict(manifest, repositories={}))
            fact["repositories"][repository] = sorted(t for t, d in served["tags"].items() if d == digest)
    return facts
