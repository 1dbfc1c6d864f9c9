"""`/v1/jobs`: progress and per-file results of background ingest jobs (multi-file uploads)."""

from __future__ import annotations

from dataclasses import asdict

from app.api.deps import PrincipalDep, ServicesDep
from app.api.routing import api_router
from app.api.schemas import FileResultPublic, JobList, JobPublic
from app.ops.jobs import Job
from ingest.pipeline import FileResult
from retriever.records import NotFoundError

router = api_router(prefix="/v1/jobs", tags=["jobs"])


def file_result_public(result: FileResult) -> FileResultPublic:
    return FileResultPublic.model_validate(asdict(result))


def job_public(job: Job) -> JobPublic:
    return JobPublic(
        id=job.id,
        state=job.state,
        collection=job.collection,
        files_total=job.files_total,
        files_done=job.files_done,
        chunks_written=job.chunks_written,
        results=[file_result_public(result) for result in list(job.results)],
        error=job.error,
        created_at=job.created_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
    )


@router.get("", response_model=JobList)
def list_jobs(services: ServicesDep, principal: PrincipalDep) -> JobList:
    """Recent jobs (newest first) of the collections the caller may read."""
    return JobList(
        jobs=[job_public(job) for job in services.jobs().recent() if principal.can_read(job.collection)]
    )


@router.get("/{job_id}", response_model=JobPublic)
def get_job(job_id: str, services: ServicesDep, principal: PrincipalDep) -> JobPublic:
    job = services.jobs().get(job_id)
    if not principal.can_read(job.collection):
        raise NotFoundError(f"job {job_id} does not exist")
    return job_public(job)
