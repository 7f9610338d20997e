"""The bus: topics, envelopes, the MQTT v5 client, RPC, the CMS and the broker launcher.

Every other package imports this one; it imports none of them.
"""

from broker.client import BusClient, Inbound, Subscription, Will, publish_properties
from broker.cms import Cms, CmsEntry, CmsEvent, Mirror
from broker.codec import CBOR, JSON, MAX_PAYLOAD_BYTES, decode, encode
from broker.data import Event, SampleMeta
from broker.datafollow import DataFollower, EventRecord, FollowerStats, Sample
from broker.errors import (
    BrokerLaunchError,
    BusError,
    CodecError,
    ErrorCode,
    MissingDependency,
    NotConnected,
    PayloadTooLarge,
    RpcError,
    RpcTimeout,
    TopicError,
    VectorError,
)
from broker.launcher import MosquittoBroker, free_port
from broker.messages import (
    Birth,
    Chat,
    ChatMessage,
    Chunk,
    Embed,
    Embedding,
    Entry,
    ErrorReply,
    Result,
    State,
    Usage,
    WireMessage,
    register_kind,
)
from broker.presence import NodeStatus, Presence, node_status, nodes_from
from broker.rpc import Request, RpcClient, RpcServer
from broker.settings import BusSettings, TlsSettings
from broker.vectors import Hit, VectorIndex

__all__ = [
    "CBOR",
    "JSON",
    "MAX_PAYLOAD_BYTES",
    "Birth",
    "BrokerLaunchError",
    "BusClient",
    "BusError",
    "BusSettings",
    "Chat",
    "ChatMessage",
    "Chunk",
    "Cms",
    "CmsEntry",
    "CmsEvent",
    "CodecError",
    "DataFollower",
    "Embed",
    "Embedding",
    "Entry",
    "ErrorCode",
    "ErrorReply",
    "Event",
    "EventRecord",
    "FollowerStats",
    "Hit",
    "Inbound",
    "Mirror",
    "MissingDependency",
    "MosquittoBroker",
    "NodeStatus",
    "NotConnected",
    "PayloadTooLarge",
    "Presence",
    "Request",
    "Result",
    "RpcClient",
    "RpcError",
    "RpcServer",
    "RpcTimeout",
    "Sample",
    "SampleMeta",
    "State",
    "Subscription",
    "TlsSettings",
    "TopicError",
    "Usage",
    "VectorError",
    "VectorIndex",
    "Will",
    "WireMessage",
    "decode",
    "encode",
    "free_port",
    "node_status",
    "nodes_from",
    "publish_properties",
    "register_kind",
]
