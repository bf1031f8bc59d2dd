"""Background jobs: a PostgreSQL-backed job runner built on procrastinate.

- ``app.worker.app``: the one procrastinate ``App`` (``job_app``) every task is declared on, the
  list of task modules a worker imports, and ``open_job_app(url)``.
- ``app.worker.defer``: ``defer_in_session``, to enqueue a job in the caller's SQLAlchemy
  transaction (it exists if, and only if, that transaction commits).
- ``app.worker.resources``: ``job_session()`` for tasks (commit on success, roll back on error).
- ``app.worker.runner``: ``run_worker`` (``tanso worker``) and ``run_worker_in_process``.
- ``app.worker.tasks``: maintenance tasks (idempotency-key purge, stalled-job recovery, pruning
  of finished jobs).

Domain tasks live in ``app/<domain>/tasks.py``, declared with ``@job_app.task(name="<domain>.<verb>")``
and listed in ``TASK_MODULES``.
"""
