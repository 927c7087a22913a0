"""Upstream peers: the compiled `server` parameters and the runtime state a balancer keeps."""

# Design notes
# ------------
# * PeerConf is one address of one `server` line, as nginx's ngx_*_upstream_rr_peer_t is: a
#   name that resolves to three addresses gives three PeerConfs sharing `server`. That matters
#   for `hash ... consistent`, which places points by the server text and then balances between
#   all addresses carrying it.
# * Peer is the mutable half. nginx keeps it per worker unless the upstream has a `zone`, and so
#   do we: a Peer belongs to one balancer in one process, and nothing here locks.
# * Times are whatever clock the caller passes as `now` (nginx uses ngx_time(), whole seconds).
#   Nothing in this package reads a clock, so tests drive time by hand.

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class PeerConf:
    """One upstream address with the parameters of its `server` directive.

    Attributes:
        name: The address as nginx prints it in `$upstream_addr`, e.g. `127.0.0.1:10025`.
        addr: The caller's address object (a SockAddr); balancers never look inside.
        weight: `weight=`; at least 1.
        max_conns: `max_conns=`; 0 means unlimited.
        max_fails: `max_fails=`; 0 disables failure accounting.
        fail_timeout: `fail_timeout=` in seconds.
        backup: `backup`: the peer belongs to the group used when all primaries are unavailable.
        down: `down`: never selected.
        server: The `server` directive's address text, which `hash ... consistent` hashes.
            Defaults to `name` (right for upstreams implied by `proxy_pass host:port`, whose
            peers are addresses, not server lines).
    """

    name: str
    addr: object = None
    weight: int = 1
    max_conns: int = 0
    max_fails: int = 1
    fail_timeout: float = 10.0
    backup: bool = False
    down: bool = False
    server: str = ""

    def __post_init__(self) -> None:
        if not self.server:
            # Frozen, so the default has to be filled in past the dataclass guard.
            object.__setattr__(self, "server", self.name)
        if self.weight < 1:
            raise ValueError(f"weight must be at least 1, not {self.weight}")
        if self.max_conns < 0 or self.max_fails < 0 or self.fail_timeout < 0:
            raise ValueError("max_conns, max_fails and fail_timeout must not be negative")


@dataclass(slots=True, eq=False)
class Peer:
    """Runtime state of one PeerConf: the fields of nginx's ngx_*_upstream_rr_peer_t.

    Compared by identity (eq=False) so that peers can be dict keys and set members.

    Attributes:
        conf: What the configuration said.
        index: Position in the balancer's combined list (primaries first, then backups); the
            number PickContext.tried holds.
        current_weight: Smooth weighted round robin's running score.
        effective_weight: The weight round robin uses now: lowered on failures by
            weight / max_fails, raised by one each time the peer is considered, up to weight.
        conns: Connections handed out by get() and not yet returned by free().
        fails: Failures counted since the peer last succeeded after a probe.
        accessed: When the last failure happened.
        checked: When the last failure happened, or when the peer was last picked after
            fail_timeout had passed since then (the probe that may clear `fails`).
        unhealthy: Set by an active health checker; the peer is skipped like `down`.
    """

    conf: PeerConf
    index: int
    # Runtime state starts as nginx's ngx_pcalloc'd peer does, so it is not a constructor input.
    current_weight: int = field(default=0, init=False)
    effective_weight: int = field(default=0, init=False)
    conns: int = field(default=0, init=False)
    fails: int = field(default=0, init=False)
    accessed: float = field(default=0.0, init=False)
    checked: float = field(default=0.0, init=False)
    unhealthy: bool = field(default=False, init=False)

    def __post_init__(self) -> None:
        self.effective_weight = self.conf.weight

    @property
    def name(self) -> str:
        return self.conf.name

    @property
    def weight(self) -> int:
        return self.conf.weight

    def live(self, now: float) -> bool:
        """True unless the peer is down, unhealthy, or failed max_fails times in fail_timeout.

        This is nginx's test, not a probe: once `fail_timeout` has passed since `checked` the
        peer is live again, gets one pick, and that pick moves `checked` to now, so it is out
        again until the pick's outcome is known (success clears `fails`).
        """
        conf = self.conf
        if conf.down or self.unhealthy:
            return False
        return not (
            conf.max_fails
            and self.fails >= conf.max_fails
            and now - self.checked <= conf.fail_timeout
        )

    def usable(self, now: float) -> bool:
        """live(now), and below max_conns: whether a balancer may pick the peer now."""
        max_conns = self.conf.max_conns
        return self.live(now) and not (max_conns and self.conns >= max_conns)

    @property
    def disabled_by_fails(self) -> bool:
        """After a failed free(): nginx logs "upstream server temporarily disabled" if true."""
        return bool(self.conf.max_fails) and self.fails >= self.conf.max_fails
