"""Run one rq worker for argilla-server's queues, SQL engine registered (server venv only).

Webhook deliveries (`record.completed`, `response.created`) and dataset jobs are rq
jobs; without a worker they sit in Redis. A single worker that runs jobs in-process
(no fork per job) keeps delivery latency and memory low on a small machine.
"""

import sql_search
from parent_watch import watch_parent


def main() -> None:
    sql_search.register()
    watch_parent()
    from rq import SimpleWorker

    from argilla_server.jobs.queues import DEFAULT_QUEUE, HIGH_QUEUE, REDIS_CONNECTION

    worker = SimpleWorker([HIGH_QUEUE, DEFAULT_QUEUE], connection=REDIS_CONNECTION)
    worker.work(with_scheduler=False, logging_level="WARNING")


if __name__ == "__main__":
    main()
