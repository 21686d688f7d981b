"""The worker side: the :class:`Worker` class users subclass, the runner that connects one to
a leader, and :class:`WorkerGroup`, which keeps N of them running.

``python -m actors.worker`` (this package's ``__main__``) runs one worker in a process.

=================  ==========================================================
module             concept
=================  ==========================================================
``_worker``        :class:`Worker`, the exit statuses of a worker process
``_job``           :class:`Job`, what a handler receives
``_runner``        :class:`WorkerRunner` and :func:`run_worker`: connection, credit, slots
``_handlers``      calling a handler (async or in a thread) until its deadline
``_failures``      how a failure is told: :class:`Reject`, error texts, failure log
``_limits``        recycling past ``max_jobs`` / ``max_memory``
``_watchdog``      noticing handlers that block the event loop
``_group``         :class:`WorkerGroup`: N instances, processes, restarts
``_loader``        loading ``module:Class`` names
=================  ==========================================================
"""

from ._failures import DeadlineExceeded as DeadlineExceeded
from ._failures import Reject as Reject
from ._group import GroupFailed as GroupFailed
from ._group import InstanceInfo as InstanceInfo
from ._group import StartFailed as StartFailed
from ._group import WorkerGroup as WorkerGroup
from ._job import Job as Job
from ._runner import WorkerRunner as WorkerRunner
from ._runner import run_worker as run_worker
from ._worker import Worker as Worker
