"""The skyrelay wire contract: message types, topics, checksums, signed envelopes and their JSON codec.

Pure: this package performs no I/O and imports nothing else of skyrelay.
"""

from protocol.alerts import AlertNotice, ScienceProductNotice
from protocol.arrival import ArrivalNotice, ExposureNotice
from protocol.checksum import format_checksum, parse_checksum
from protocol.codec import SCHEMA_VERSION, Message, all_schemas, decode
from protocol.control import RouteControl
from protocol.custody import Custody, Receipt
from protocol.errors import ProtocolError
from protocol.events import Event, Problem
from protocol.names import validate_name
from protocol.presence import Presence
from protocol.products import ProductNotice
from protocol.transfer import Ack, AckStatus, FileIdentity, Offer

__all__ = [
    "SCHEMA_VERSION",
    "Ack",
    "AckStatus",
    "AlertNotice",
    "ArrivalNotice",
    "Custody",
    "Event",
    "ExposureNotice",
    "FileIdentity",
    "Message",
    "Offer",
    "Presence",
    "Problem",
    "ProductNotice",
    "ProtocolError",
    "Receipt",
    "RouteControl",
    "ScienceProductNotice",
    "all_schemas",
    "decode",
    "format_checksum",
    "parse_checksum",
    "validate_name",
]
