"""The deployment files: the compose file is valid, and its `scale` profile runs the parts apart."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def test_compose_file_is_valid() -> None:
    compose = shutil.which("docker-compose")
    if compose is None:
        pytest.skip("docker-compose is not installed (Debian package docker-compose); cannot check the file")
    result = subprocess.run(
        [compose, "-f", str(ROOT / "docker-compose.yml"), "config"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    services = yaml.safe_load(result.stdout)["services"]
    default = {name for name, service in services.items() if not service.get("profiles")}
    assert default == {"api", "ui", "postgres"}  # `docker compose up`: one API with its model in process
    scale = {name for name, service in services.items() if service.get("profiles") == ["scale"]}
    assert scale == {
        "redis", "rabbitmq", "milvus", "engine", "api-1", "api-2", "worker-1", "worker-2", "ui-scale"
    }  # fmt: skip
    for replica in ("api-1", "api-2", "worker-1", "worker-2"):
        environment = services[replica]["environment"]
        assert environment["ARCHIVIST_LLM_BACKEND"] == "openai" and environment["ARCHIVIST_REDIS_URL"]
        assert environment["ARCHIVIST_BROKER_URL"].startswith("amqp://")
        assert environment["ARCHIVIST_VECTOR_STORE"] == "milvus"
        assert environment["ARCHIVIST_MILVUS_URI"] == "http://milvus:19530"
    assert services["worker-1"]["command"] == ["archivist", "worker"]
