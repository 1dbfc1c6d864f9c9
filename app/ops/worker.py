"""Ingest jobs on Celery workers, when `ARCHIVIST_BROKER_URL` names a broker (RabbitMQ `amqp://` or Redis
`redis://`): the API sends each job's id (`Dispatcher`), `archivist worker` processes run the jobs
(`run_worker`). The jobs themselves, their progress and results, are rows in SQL (`app.ops.jobs`).

A job's message is acknowledged when the job ends and put back in the queue when its worker dies, so a job
whose worker was killed goes to another worker. RabbitMQ hands it on as soon as the connection drops; Redis
only once its visibility timeout (an hour) has passed. Each worker process runs one job at a time.
"""

from __future__ import annotations

import os
import socket

from celery import Celery

from app.ops.jobs import BROKER, JobStore, run_job, this_process
from app.ops.shared_state import SharedStateError, redacted
from app.settings import Settings
from ingest.pipeline import Ingestor

INGEST_TASK = "archivist.ingest_job"
TIMEOUT_S = 3.0


def celery_app(url: str, queue: str) -> Celery:
    app = Celery("archivist", broker=url, set_as_current=False)
    app.conf.update(
        task_default_queue=queue,
        task_acks_late=True,  # acknowledged when the job ends, not when it starts
        task_reject_on_worker_lost=True,  # and back in the queue when the worker running it dies
        worker_prefetch_multiplier=1,  # a worker holds no job it is not running
        task_ignore_result=True,  # results are in SQL
        broker_connection_timeout=TIMEOUT_S,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
    )
    return app


class Dispatcher:
    """Hands job ids to the workers; checks at construction that the broker answers."""

    def __init__(self, url: str, queue: str) -> None:
        self._url = url
        self._app = celery_app(url, queue)
        try:
            with self._app.connection_for_write() as connection:
                connection.ensure_connection(max_retries=1, timeout=TIMEOUT_S)
        except Exception as error:  # kombu raises its own, socket and transport errors alike
            raise SharedStateError(
                f"cannot reach the broker at {redacted(url)} (ARCHIVIST_BROKER_URL): {error}"
            ) from error

    def __call__(self, job_id: str) -> None:
        try:
            self._app.send_task(
                INGEST_TASK,
                args=[job_id],
                retry=True,
                retry_policy={"max_retries": 2, "interval_start": 0, "interval_step": 0.5},
            )
        except Exception as error:
            raise SharedStateError(
                f"the job could not be queued: the broker at {redacted(self._url)} is unreachable ({error})"
            ) from error


def run_worker(settings: Settings, ingestor: Ingestor, store: JobStore) -> None:
    """Run jobs from the broker until stopped (SIGTERM or Ctrl-C: the job in hand is finished first)."""
    assert settings.broker_url is not None
    app = celery_app(settings.broker_url.get_secret_value(), settings.broker_queue)

    @app.task(name=INGEST_TASK)
    def ingest_job(job_id: str) -> None:
        run_job(store, job_id, ingestor, settings.upload_dir, runner=f"{BROKER}:{this_process()}")

    app.worker_main(
        [
            "worker",
            "--pool=solo",
            f"--hostname=archivist-{os.getpid()}@{socket.gethostname()}",
            "--without-gossip",
            "--without-mingle",
            "--loglevel=INFO",
        ]
    )
