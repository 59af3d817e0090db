"""``file``: a model file already on this host, used where it lies (ORCH-3300).

``/models/x.gguf``, ``file:/models/x.gguf`` and ``file:///models/x.gguf`` name
the same file. It is hashed, not copied: the bytes are already local, and a
copy of a 500 MB file per registration would double the disk it costs.
"""

from __future__ import annotations

from pathlib import Path

from llama_orch.core.model_source_api import (
    MalformedModelRef,
    ModelFetchError,
    ModelSource,
    Progress,
    SourceMeta,
)

__all__ = ["FileSource"]


class FileSource(ModelSource):
    in_place = True

    def local_path(self, locator: str) -> Path:
        if not locator:
            raise MalformedModelRef("a file reference needs a path")
        path = Path(locator).expanduser()
        if not path.is_file():
            raise ModelFetchError(f"model file {path} does not exist")
        return path

    def resolve(self, locator: str) -> SourceMeta:
        path = self.local_path(locator)
        return SourceMeta(filename=path.name, source_url=path.resolve().as_uri())

    def fetch(self, locator: str, meta: SourceMeta, partial: Path, progress: Progress) -> None:
        raise ModelFetchError("file models are used in place, never fetched")
