"""The Celery application: Redis broker, late acknowledgement, queues and the beat schedule."""

from __future__ import annotations

from celery import Celery
from celery.signals import worker_process_init

from core.settings import Settings, get_settings
from workers import resources
from workers.jobs import BATCH_JOBS, GRAPH


def create_app(settings: Settings) -> Celery:
    app = Celery("aisle", broker=settings.redis_url, include=["workers.tasks"])
    app.conf.update(
        # Tasks are idempotent (claimed rows, upserts), so a task that dies mid-way is run again
        # rather than lost: acknowledge after the work, and requeue when the child process dies.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        # One task at a time per process: a prefetched batch would sit idle behind the current one
        # and be delayed by the visibility timeout if the worker died.
        worker_prefetch_multiplier=1,
        task_ignore_result=True,
        broker_transport_options={"visibility_timeout": settings.task_visibility_timeout_s},
        broker_connection_retry_on_startup=True,
        task_default_queue="db",
        task_routes={
            "aisle.rebuild_graph": {"queue": "db"},
            "aisle.warm_recommendations": {"queue": "db"},
        },
        beat_schedule={
            **{
                f"tick-{name}": {
                    "task": "aisle.tick",
                    "schedule": settings.tick_interval_s,
                    "args": (name,),
                    "options": {"queue": job.queue},
                }
                for name, job in BATCH_JOBS.items()
            },
            f"tick-{GRAPH.name}": {
                "task": "aisle.rebuild_graph",
                "schedule": settings.graph_interval_s,
                "options": {"queue": GRAPH.queue},
            },
            **(
                {
                    "warm-recommendations": {
                        "task": "aisle.warm_recommendations",
                        "schedule": settings.recommend_warm_interval_s,
                        "options": {"queue": "db"},
                    }
                }
                if settings.gateway_address and settings.recommend_cache_ttl_s > 0
                else {}
            ),
        },
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
    )
    return app


app = create_app(get_settings())


@worker_process_init.connect
def _fresh_connections(**_) -> None:
    resources.reset()
