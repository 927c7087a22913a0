"""Upstream groups shared by the stream and http proxies: peers and load balancing, I/O-free."""

from pyngx.upstream.balancers import (
    METHODS,
    Balancer,
    BalancerError,
    ConsistentHash,
    Hash,
    IpHash,
    LeastConn,
    PickContext,
    Random,
    RandomTwo,
    RoundRobin,
    chash_points,
    ip_hash_key,
    make_balancer,
)
from pyngx.upstream.peers import Peer, PeerConf

__all__ = [
    "METHODS",
    "Balancer",
    "BalancerError",
    "ConsistentHash",
    "Hash",
    "IpHash",
    "LeastConn",
    "Peer",
    "PeerConf",
    "PickContext",
    "Random",
    "RandomTwo",
    "RoundRobin",
    "chash_points",
    "ip_hash_key",
    "make_balancer",
]
