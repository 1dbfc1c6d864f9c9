"""The one place that reads the environment (prefix `ARCHIVIST_`) and builds each package's config."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from ingest.config import ChunkerConfig
from retriever.config import RetrieverConfig


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ARCHIVIST_", env_file=".env", extra="ignore")

    data_dir: Path = Field(Path("data"), description="Where the SQLite database, indexes and uploads live")
    database_url: str | None = Field(None, description="SQLAlchemy URL; default: SQLite under data_dir")
    embedder_path: Path | None = Field(None, description="Local sentence-transformers folder; default MiniLM")
    embedder_device: str = Field("cpu", description="Device for embeddings: cpu, cuda")
    llm_backend: Literal["hf"] = Field("hf", description="Generation backend")
    llm_path: Path | None = Field(None, description="Local GGUF file or safetensors folder; default SmolLM2")
    llm_device: str = Field("cpu", description="Device for the LLM")
    max_new_tokens: int = Field(256, ge=1, le=4096, description="Longest answer, in tokens")
    chunk_tokens: int = Field(200, ge=16, description="Chunk size in embedder tokens")
    chunk_overlap: int = Field(32, ge=0, description="Overlap between consecutive chunks, in tokens")
    top_k: int = Field(5, ge=1, le=50, description="Passages retrieved per question")
    default_collection: str = Field("default", description="Collection used when a request names none")
    host: str = Field("127.0.0.1", description="API bind address")
    api_port: int = Field(8000, description="API port")
    ui_port: int = Field(8501, description="Streamlit port")
    api_url: str | None = Field(None, description="API base URL the UI talks to; default from host/port")
    max_upload_bytes: int = Field(50 * 1024 * 1024, description="Largest accepted upload")

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.data_dir / 'archivist.db').resolve()}"

    @property
    def resolved_api_url(self) -> str:
        return self.api_url or f"http://{self.host}:{self.api_port}"

    @property
    def upload_dir(self) -> Path:
        return self.data_dir / "uploads"

    def retriever_config(self) -> RetrieverConfig:
        return RetrieverConfig(
            database_url=self.resolved_database_url,
            index_dir=self.data_dir / "index",
            embedder_path=self.embedder_path,
            embedder_device=self.embedder_device,
            top_k=self.top_k,
        )

    def chunker_config(self) -> ChunkerConfig:
        return ChunkerConfig(chunk_tokens=self.chunk_tokens, overlap_tokens=self.chunk_overlap)


@lru_cache
def get_settings() -> Settings:
    return Settings()
