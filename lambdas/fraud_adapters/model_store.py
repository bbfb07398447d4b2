"""Model store: published model versions and the ``champion`` pointer the scorer follows.

Layout (see docs/architecture.md)::

    <root>/<model>/versions/<version>/model.ubj
    <root>/<model>/versions/<version>/baseline.ubj     request-only model for degraded mode
    <root>/<model>/versions/<version>/manifest.json
    <root>/<model>/champion.json                       {"version": "<version>"}
"""

import json
import time
from dataclasses import dataclass, field
from typing import Any

from fraud_adapters.blobs import BlobStore
from fraud_core.schemas import ModelManifest
from fraud_core.spec import FEATURE_SPEC_VERSION


class ModelNotFoundError(LookupError):
    pass


@dataclass
class ModelFiles:
    manifest: ModelManifest
    model: bytes
    baseline: bytes | None


class ModelStore:
    def __init__(self, blobs: BlobStore, model_name: str = "fraudsys") -> None:
        self.blobs = blobs
        self.model_name = model_name

    def _path(self, *parts: str) -> str:
        return "/".join((self.model_name, *parts))

    def publish(
        self, manifest: ModelManifest, model: bytes, baseline: bytes | None = None, champion: bool = True
    ) -> str:
        """Write a version's files, then (optionally) move the champion pointer to it."""
        version_dir = self._path("versions", manifest.version)
        self.blobs.put(f"{version_dir}/{manifest.model_file}", model)
        if baseline is not None:
            self.blobs.put(f"{version_dir}/baseline.ubj", baseline)
        where = self.blobs.put(
            f"{version_dir}/manifest.json", manifest.model_dump_json(indent=2).encode(), "application/json"
        )
        if champion:
            self.set_champion(manifest.version)
        return where

    def set_champion(self, version: str) -> None:
        pointer = json.dumps({"version": version, "updated_at": time.time()}).encode()
        self.blobs.put(self._path("champion.json"), pointer, "application/json")

    def champion_version(self) -> str | None:
        raw = self.blobs.get(self._path("champion.json"))
        if raw is None:
            return None
        version: Any = json.loads(raw).get("version")
        return str(version) if version else None

    def load(self, version: str, label_delay: int | None = None) -> ModelFiles:
        """A published version; refused (``ModelNotFoundError``) when it was built on another
        feature spec, or with another label delay than ``label_delay`` (the merchant risk windows
        the caller computes: a model trained with 7 days must not be served with 2)."""
        version_dir = self._path("versions", version)
        raw = self.blobs.get(f"{version_dir}/manifest.json")
        if raw is None:
            raise ModelNotFoundError(
                f"no manifest for {self.model_name} version {version} in {self.blobs.uri}"
            )
        manifest = ModelManifest.model_validate_json(raw)
        if manifest.feature_spec_version != FEATURE_SPEC_VERSION:
            raise ModelNotFoundError(
                f"model {manifest.version} was trained on feature spec {manifest.feature_spec_version}, "
                f"this code computes {FEATURE_SPEC_VERSION}: retrain or deploy matching code"
            )
        if label_delay is not None and manifest.label_delay_seconds != label_delay:
            raise ModelNotFoundError(
                f"model {manifest.version} was trained with a label delay of "
                f"{manifest.label_delay_seconds} s, "
                f"this scorer computes {label_delay} s (LABEL_DELAY_SECONDS): retrain or configure it"
            )
        model = self.blobs.get(f"{version_dir}/{manifest.model_file}")
        if model is None:
            raise ModelNotFoundError(f"{manifest.model_file} missing for version {version}")
        return ModelFiles(manifest, model, self.blobs.get(f"{version_dir}/baseline.ubj"))


@dataclass
class ChampionCache:
    """Follows the champion pointer, re-reading it at most every ``ttl`` seconds."""

    store: ModelStore
    ttl: float = 30.0
    clock: Any = time.monotonic
    missing_ttl: float = 1.0
    _checked_at: float = field(default=float("-inf"), init=False)
    _version: str | None = field(default=None, init=False)

    def current_version(self) -> str | None:
        now = self.clock()
        # no champion yet: look again within a second, so the first publication is picked up fast
        ttl = self.ttl if self._version is not None else min(self.ttl, self.missing_ttl)
        if now - self._checked_at >= ttl:
            self._version = self.store.champion_version()
            self._checked_at = now
        return self._version
