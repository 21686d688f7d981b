"""Running a cluster: its configuration (TOML or command line), ``python -m actors.cluster``
(this package's ``__main__``), and the shell client ``python -m actors``.

=================  ==========================================================
module             concept
=================  ==========================================================
``_model``         the configuration's values: leader, groups, the whole
``_config``        reading them from a TOML file or the command line
``_run``           :func:`run_cluster`: a leader and its groups, the CLI
``_stats_text``    the leader's statistics as text for the console
``_shell``         ``python -m actors``: submit, result, cancel, publish, status
=================  ==========================================================
"""

from ._config import load_config as load_config
from ._model import ClusterConfig as ClusterConfig
from ._model import GroupConfig as GroupConfig
from ._model import GroupRetryConfig as GroupRetryConfig
from ._model import LeaderTable as LeaderTable
from ._run import run_cluster as run_cluster
