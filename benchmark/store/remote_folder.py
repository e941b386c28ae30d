"""A folder in a tracking server's artifact location (mlflow-artifacts:, s3:, gs:, ...), read and
written through MLflow's artifact repositories: where jobs on any host keep their epoch
checkpoints when the store is a tracking server (benchmark.training.resume).

Such stores cannot rename a file, so a write is never made in place: each is a new file, and the
older one is deleted only after the new one is uploaded whole.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..core.errors import BenchmarkError


def is_remote(place: str) -> bool:
    """Whether `place` (a resume location) is an artifact URI rather than a folder on this host."""
    scheme, sep, _ = place.partition(":")
    return bool(sep) and len(scheme) > 1 and scheme != "file"  # "C:\\..." is a Windows drive, not a scheme


class RemoteFolder:
    def __init__(self, uri: str, tracking_uri: str):
        self.uri = uri.rstrip("/")
        self.tracking_uri = tracking_uri

    def __repr__(self) -> str:
        return self.uri

    def _repo(self):
        from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

        return get_artifact_repository(self.uri, tracking_uri=self.tracking_uri)

    def names(self, folder: str) -> list[str]:
        """The files directly in `folder` ("" for none), as paths relative to this folder."""
        try:
            return sorted(f.path for f in self._repo().list_artifacts(folder) if not f.is_dir)
        except Exception as exc:  # noqa: BLE001 - MLflow raises its own or the transport's types
            raise BenchmarkError(f"{self.uri}/{folder}: cannot list the epoch checkpoints there ({exc})") from exc

    def get(self, name: str, root: Path) -> Path:
        """Download file `name` to `root/name`; that path."""
        root.mkdir(parents=True, exist_ok=True)
        quiet = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"  # a bar per file would fill a grid's output
        before = os.environ.get(quiet)
        os.environ[quiet] = "false"
        try:
            return Path(self._repo().download_artifacts(name, dst_path=str(root)))
        finally:
            if before is None:
                del os.environ[quiet]
            else:
                os.environ[quiet] = before

    def put(self, local: Path, folder: str) -> str:
        """Upload `local` into `folder` under its own name; the name written."""
        self._repo().log_artifact(str(local), artifact_path=folder or None)
        return f"{folder}/{local.name}" if folder else local.name

    def delete(self, name: str) -> None:
        self._repo().delete_artifacts(name)
