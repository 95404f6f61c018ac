"""Opening an artifact folder: the manifest, its schema, checksums and path safety."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import jsonschema

from ..models.components import ComponentSpec
from ..models.manifest import FORMAT, MANIFEST_NAME, SCHEMA_VERSION, manifest_schema, sha256_file
from .errors import ArtifactError
from .onnx_proto import ProtobufError, external_data_locations


@dataclass(frozen=True)
class Component:
    spec: ComponentSpec
    path: Path  # the .onnx file
    precision: str
    entry: dict  # the manifest entry, as written
    checksums: tuple[str, ...] = ()  # SHA-256 of the component's files, from the manifest
    files: tuple[Path, ...] = ()  # every file of the component (the .onnx and its external data)


@dataclass(frozen=True)
class Artifact:
    root: Path
    manifest: dict

    @property
    def pipeline(self) -> dict:
        return self.manifest["pipeline"]

    @property
    def family(self) -> str:
        return self.manifest["family"]

    def component(self, name: str) -> Component:
        entries = self.manifest["components"]
        if name not in entries:
            raise ArtifactError(f"The artifact at {self.root} has no {name} component "
                                f"(it has: {', '.join(entries)}).")
        entry = entries[name]
        checksums = tuple(self.manifest["files"][relative]["sha256"] for relative in entry["files"])
        return Component(ComponentSpec.from_json(name, entry), self.root / entry["path"], entry["precision"], entry,
                         checksums, tuple(self.root / relative for relative in entry["files"]))

    def variant(self, name: str, precision: str) -> Component:
        """Component `name` in the stored `precision` variant ("fp32": the component as exported)."""
        base = self.component(name)
        if precision == "fp32":
            return base
        variants = base.entry.get("variants", {})
        if precision not in variants:
            have = ", ".join(["fp32", *variants])
            raise ArtifactError(f"The artifact's {name} has no {precision} variant (it has: {have}); make one with "
                                f"`sdrt quantize {self.root} --precision {precision}`.")
        entry = variants[precision]
        checksums = tuple(self.manifest["files"][relative]["sha256"] for relative in entry["files"])
        return Component(base.spec, self.root / entry["path"], precision, entry, checksums,
                         tuple(self.root / relative for relative in entry["files"]))

    def component_for_role(self, role: str, vae: str | None = None) -> Component:
        """The component of `role`; for the VAE's roles, that of the VAE named `vae` (None: the
        checkpoint's own; others are added under a name, e.g. taesd: export/vae.py)."""
        for name, entry in self.manifest["components"].items():
            if entry["role"] == role and entry.get("vae") == vae:
                return self.component(name)
        which = f" of the VAE {vae!r}" if vae else ""
        raise ArtifactError(f"The artifact at {self.root} has no {role} component{which}.")

    @property
    def vaes(self) -> list[str]:
        """The names of the VAEs added beside the checkpoint's own (e.g. taesd)."""
        return sorted({entry["vae"] for entry in self.manifest["components"].values() if entry.get("vae")})

    def has_role(self, role: str) -> bool:
        return any(entry["role"] == role for entry in self.manifest["components"].values())

    def tokenizer_entry(self, component: str) -> dict:
        for entry in self.manifest["tokenizers"]:
            if entry["for_component"] == component:
                return entry
        raise ArtifactError(f"The artifact at {self.root} has no tokenizer for {component}.")

    def file(self, relative: str) -> Path:
        return self.root / relative


def open_artifact(path: str | os.PathLike, *, verify_checksums: bool = True) -> Artifact:
    """Read and check an artifact folder; raise ArtifactError with what to do if it is unusable.

    Checks: the manifest exists, is of a schema version this sdrt reads and validates against
    the JSON Schema; every file it lists stays inside the folder, exists, has its recorded size
    and (unless verify_checksums is False) its SHA-256; every ONNX external-data reference
    points at a file the component lists.
    """
    root = Path(path).expanduser()
    if not root.is_dir():
        raise ArtifactError(f"Artifact folder {root} does not exist; export one with "
                            f"`sdrt export CHECKPOINT -o {root}`.")
    manifest_path = root / MANIFEST_NAME
    if not manifest_path.is_file():
        raise ArtifactError(f"{root} has no {MANIFEST_NAME}, so it is not a complete sdrt artifact (an interrupted "
                            f"export leaves none); export it again with `sdrt export`.")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ArtifactError(f"{manifest_path} is not valid JSON ({error}); export the artifact again.") from error
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ArtifactError(f"{manifest_path} is not an sdrt manifest (its format is not {FORMAT!r}).")
    version = manifest.get("schema_version")
    if isinstance(version, int) and version > SCHEMA_VERSION:
        raise ArtifactError(f"{root} was written with manifest schema version {version}, but this sdrt reads up to "
                            f"version {SCHEMA_VERSION}; upgrade sdrt (pip install -U sdrt) to load it.")
    try:
        jsonschema.validate(manifest, manifest_schema())
    except jsonschema.ValidationError as error:
        where = "/".join(str(p) for p in error.absolute_path) or "(top level)"
        raise ArtifactError(
            f"{manifest_path} does not follow the manifest schema at {where}: {error.message}.") from error

    resolved_root = root.resolve()
    for relative, record in manifest["files"].items():
        file_path = _inside(resolved_root, relative, manifest_path)
        if not file_path.is_file():
            raise ArtifactError(f"{root} is incomplete: {relative} is missing. Copy the whole artifact folder again.")
        if file_path.stat().st_size != record["size"]:
            raise ArtifactError(f"{relative} in {root} has {file_path.stat().st_size} bytes, the manifest says "
                                f"{record['size']}: the file is corrupt or was changed. Copy or export it again.")
        if verify_checksums and sha256_file(file_path) != record["sha256"]:
            raise ArtifactError(f"{relative} in {root} does not match its SHA-256 checksum in the manifest: the file "
                                "is corrupt or was changed. Copy or export the artifact again.")
    for name, component in manifest["components"].items():
        for label, entry in [(name, component)] + [(f"{name} {precision}", variant) for precision, variant
                                                   in component.get("variants", {}).items()]:
            for relative in set(entry["files"]) | {entry["path"]}:
                _inside(resolved_root, relative, manifest_path)
                if relative not in manifest["files"]:
                    raise ArtifactError(f"{manifest_path}: {label} names {relative}, which has no checksum entry.")
            if entry.get("format", "onnx") == "onnx":  # an OpenVINO model's weights file is listed beside it
                _check_external_data(resolved_root, label, entry)
    return Artifact(root, manifest)


def _inside(root: Path, relative: str, manifest_path: Path) -> Path:
    pure = PurePosixPath(relative)
    target = (root / relative).resolve()
    if pure.is_absolute() or ".." in pure.parts or not target.is_relative_to(root):
        raise ArtifactError(f"{manifest_path} names {relative!r}, a path outside the artifact folder; refusing to "
                            "load it (an artifact may only refer to its own files).")
    return target


def _check_external_data(root: Path, name: str, entry: dict) -> None:
    model = root / entry["path"]
    try:
        locations = external_data_locations(model)
    except (ProtobufError, UnicodeDecodeError, ValueError) as error:
        raise ArtifactError(
            f"{entry['path']} is not a readable ONNX file ({error}); export the artifact again.") from error
    folder = PurePosixPath(entry["path"]).parent
    for location in locations:
        relative = (folder / location).as_posix()
        target = (model.parent / location).resolve()
        pure = PurePosixPath(location)
        if pure.is_absolute() or ".." in pure.parts or not target.is_relative_to(root):
            raise ArtifactError(f"{entry['path']} refers to external data at {location!r}, outside the artifact "
                                "folder; refusing to load it (path traversal).")
        if relative not in entry["files"]:
            raise ArtifactError(f"{entry['path']} refers to external data {location!r}, which the manifest does not "
                                f"list for {name}; export the artifact again.")
