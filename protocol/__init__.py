"""The trio-actors wire protocol, sans-I/O: bytes in, messages out.

No trio, no sockets, no clocks: this package only turns bytes into message objects and
message objects into bytes, checks subjects and patterns, and indexes subscriptions.
Time, where a rule needs it, enters as an argument. See ``docs/protocol.md``.
"""

from ._bundle import BUNDLE_OVERHEAD as BUNDLE_OVERHEAD
from ._bundle import BUNDLE_VERSION as BUNDLE_VERSION
from ._bundle import bundle_frames as bundle_frames
from ._bundle import encode_array as encode_array
from ._bundle import encode_item as encode_item
from ._bundle import message_of as message_of
from ._bundle import to_array as to_array
from ._codec import decode_body as decode_body
from ._codec import encode_body as encode_body
from ._codec import from_wire as from_wire
from ._codec import to_wire as to_wire
from ._errors import ErrorCode as ErrorCode
from ._errors import FrameTooLarge as FrameTooLarge
from ._errors import InvalidField as InvalidField
from ._errors import InvalidSubject as InvalidSubject
from ._errors import MalformedFrame as MalformedFrame
from ._errors import ProtocolError as ProtocolError
from ._errors import StateViolation as StateViolation
from ._errors import UnknownMessage as UnknownMessage
from ._errors import UnsupportedVersion as UnsupportedVersion
from ._fields import ROLES as ROLES
from ._framing import DEFAULT_MAX_FRAME_SIZE as DEFAULT_MAX_FRAME_SIZE
from ._framing import FLAG_COMPRESSED as FLAG_COMPRESSED
from ._framing import HEADER_SIZE as HEADER_SIZE
from ._framing import FrameDecoder as FrameDecoder
from ._framing import decode as decode
from ._framing import encode as encode
from ._index import SubjectIndex as SubjectIndex
from ._messages import MESSAGE_TYPES as MESSAGE_TYPES
from ._messages import Ack as Ack
from ._messages import Assign as Assign
from ._messages import Bye as Bye
from ._messages import CacheAck as CacheAck
from ._messages import CachePut as CachePut
from ._messages import Cancel as Cancel
from ._messages import Chunk as Chunk
from ._messages import Credit as Credit
from ._messages import Deliver as Deliver
from ._messages import Error as Error
from ._messages import Hello as Hello
from ._messages import Message as Message
from ._messages import Nack as Nack
from ._messages import Ping as Ping
from ._messages import Pong as Pong
from ._messages import Progress as Progress
from ._messages import Publish as Publish
from ._messages import Result as Result
from ._messages import Submit as Submit
from ._messages import Subscribe as Subscribe
from ._messages import Unsubscribe as Unsubscribe
from ._messages import Welcome as Welcome
from ._session import ALLOWED as ALLOWED
from ._session import Session as Session
from ._session import State as State
from ._session import TimerAction as TimerAction
from ._subjects import is_valid_pattern as is_valid_pattern
from ._subjects import is_valid_subject as is_valid_subject
from ._subjects import subject_matches as subject_matches
from ._subjects import validate_pattern as validate_pattern
from ._subjects import validate_subject as validate_subject
from ._version import PROTOCOL_VERSION as PROTOCOL_VERSION
from ._version import SUPPORTED_VERSIONS as SUPPORTED_VERSIONS
from ._version import negotiate_version as negotiate_version
