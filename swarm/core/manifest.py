"""The result manifest: which blobs make up one attempt's result, and its one canonical encoding.

Theory of operation
-------------------
A result's `digest` names a *manifest* blob, canonical UTF-8 JSON with sorted keys:

    {"files": {"<relative path>": <digest>, ...}, "stderr": <digest>, "stdout": <digest>}

`manifest_bytes` writes one (equal manifests are one blob, whoever writes them); `parse_manifest`
reads one and validates it strictly. A manifest may have been written by any node of the swarm, so
it is untrusted input: every digest must be a sha256 name and every file path must be relative,
normalized and free of `..`, so that laying the files out under an output directory can never
write outside it. The daemon writes manifests and reads them to copy a result's blobs; `swarm
results` reads them to lay the files out. Pure: bytes in, bytes or a `Manifest` out.
"""

from __future__ import annotations

import json
import posixpath
import re
from dataclasses import dataclass, field
from typing import Any

from swarm.errors import CorruptBlobError

MANIFEST_BYTES_MAX = 64 << 20  # a manifest bigger than this is refused, not read into memory
NAME_BYTES_MAX = 255  # NAME_MAX of Linux and macOS: a longer path component cannot be created
STREAMS = ("stdout", "stderr")  # file names the streams take in a task's results dir

_DIGEST_RE = re.compile(r"[0-9a-f]{64}")
_MANIFEST_KEYS = frozenset({"stdout", "stderr", "files"})


@dataclass(frozen=True, slots=True)
class Manifest:
    """A validated result manifest: the digests of stdout, stderr and each output file."""

    stdout: str
    stderr: str
    files: dict[str, str] = field(default_factory=dict)  # relative path -> digest


def manifest_bytes(stdout: str, stderr: str, files: dict[str, str]) -> bytes:
    """The canonical encoding of a manifest (so equal manifests are one blob)."""
    body = {"stdout": stdout, "stderr": stderr, "files": dict(files)}
    # ASCII JSON (non-ASCII paths as \u escapes): one encoding, whoever writes the manifest.
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode("utf-8")


def parse_manifest(data: bytes) -> Manifest:
    """Decode and strictly validate a manifest; CorruptBlobError naming the problem otherwise."""
    try:
        raw = json.loads(data.decode("utf-8"), object_pairs_hook=_no_duplicate_keys)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise CorruptBlobError(f"manifest is not UTF-8 JSON: {exc}") from exc
    if not isinstance(raw, dict):
        raise CorruptBlobError(f"manifest is not a JSON object but {type(raw).__name__}")
    if set(raw) != _MANIFEST_KEYS:
        raise CorruptBlobError(
            f"manifest keys are {sorted(raw)}, expected exactly {sorted(_MANIFEST_KEYS)}"
        )
    stdout = _manifest_digest("stdout", raw["stdout"])
    stderr = _manifest_digest("stderr", raw["stderr"])
    files = raw["files"]
    if not isinstance(files, dict):
        raise CorruptBlobError(f"manifest 'files' is not an object but {type(files).__name__}")
    checked: dict[str, str] = {}
    for path, digest in files.items():
        _check_relative_path(path)
        checked[path] = _manifest_digest(f"file {path!r}", digest)
    # "a" and "a/b" cannot both be files: one of them would have to be a directory.
    for path in checked:
        parts = path.split("/")
        for i in range(1, len(parts)):
            prefix = "/".join(parts[:i])
            if prefix in checked:
                raise CorruptBlobError(
                    f"manifest file {prefix!r} is also a directory of file {path!r}"
                )
    return Manifest(stdout, stderr, checked)


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # json.loads would silently keep the last of two equal keys; a canonical manifest has none.
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise CorruptBlobError(f"manifest repeats the key {key!r}")
        out[key] = value
    return out


def _manifest_digest(what: str, value: Any) -> str:
    if not isinstance(value, str) or _DIGEST_RE.fullmatch(value) is None:
        raise CorruptBlobError(
            f"manifest {what}: not a sha256 digest (64 lowercase hex digits): {value!r:.100}"
        )
    return value


def _check_relative_path(path: Any) -> None:
    """Refuse any file path that could name something outside the directory it is joined to."""
    if not isinstance(path, str) or not path:
        raise CorruptBlobError(f"manifest file path is not a non-empty string: {path!r:.100}")
    if "\x00" in path:
        raise CorruptBlobError(f"manifest file path contains NUL: {path!r:.100}")
    if path.startswith("/"):
        raise CorruptBlobError(f"manifest file path is absolute: {path!r:.100}")
    parts = path.split("/")
    if "" in parts:
        raise CorruptBlobError(f"manifest file path has an empty component: {path!r:.100}")
    if ".." in parts:
        raise CorruptBlobError(f"manifest file path goes up with '..': {path!r:.100}")
    if posixpath.normpath(path) != path or "." in parts:
        raise CorruptBlobError(f"manifest file path is not normalized: {path!r:.100}")
    try:
        encoded = [part.encode("utf-8") for part in parts]
    except UnicodeEncodeError:
        # A lone surrogate (valid in JSON's \u escapes) cannot be a file name.
        raise CorruptBlobError(f"manifest file path is not valid UTF-8: {path!r:.100}") from None
    if any(len(part) > NAME_BYTES_MAX for part in encoded):
        raise CorruptBlobError(
            f"manifest file path has a component over {NAME_BYTES_MAX} bytes: {path!r:.100}"
        )


def stream_clash(rel: str) -> str | None:
    """The stream (stdout or stderr) whose place in a task's results dir an output file at
    `rel` would take, or None."""
    top = rel.split("/")[0]
    return top if top in STREAMS else None
