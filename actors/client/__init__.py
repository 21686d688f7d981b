"""The client side: :class:`Client` submits jobs, maps over many, publishes and subscribes,
over one pipelined connection; the errors it raises.

=================  ==========================================================
module             concept
=================  ==========================================================
``_client``        :class:`Client`: connection, submit, result, cancel, query
``_call``          one outstanding call and waiting for it to settle
``_map``           :class:`JobMap`, ``Client.map``'s bounded iterator
``_subscription``  :class:`Subscription`, the :class:`Publication` it yields, the table
``_errors``        the exceptions a client raises
=================  ==========================================================
"""

from ._client import Client as Client
from ._errors import AuthFailed as AuthFailed
from ._errors import Busy as Busy
from ._errors import ClientError as ClientError
from ._errors import Conflict as Conflict
from ._errors import ConnectionLost as ConnectionLost
from ._errors import ConnectionRefused as ConnectionRefused
from ._errors import ConnectTimeout as ConnectTimeout
from ._errors import DeadLettered as DeadLettered
from ._errors import JobCancelled as JobCancelled
from ._errors import JobFailed as JobFailed
from ._errors import NoRoute as NoRoute
from ._errors import NotFound as NotFound
from ._errors import NotPermitted as NotPermitted
from ._errors import RemoteError as RemoteError
from ._errors import SubmitTimeout as SubmitTimeout
from ._errors import TLSFailed as TLSFailed
from ._errors import TooLarge as TooLarge
from ._errors import WrongProtocol as WrongProtocol
from ._map import JobMap as JobMap
from ._subscription import Publication as Publication
from ._subscription import Subscription as Subscription
