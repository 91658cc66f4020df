package policy

import (
	"net/netip"

	"github.com/trireme-go/trireme/identity"
	"github.com/trireme-go/trireme/ipproto"
	"github.com/trireme-go/trireme/reason"
)

// Endpoint is one end of a connection: a PU (an enforcer runs in front of
// it and its identity is its tags) or a host without an enforcer, known by
// its address only. Build it with Engine.PU or Host.
type Endpoint struct {
	pu   bool
	tags identity.Tags
	addr netip.Addr
	// Prepared by Engine.PU, once per PU: its rules (valid for eng only)
	// and its identity as peers see it in its tokens.
	eng *Engine
	pol *PUPolicy
	id  *identity.Identity
}

// PU is an endpoint behind an enforcer with these tags, at addr. Its rules
// and identity are prepared once: deciding many connections with it costs
// only the lookups. An invalid addr (unknown) is taken to be inside the
// target networks and outside the excluded ones, and no CIDR rule matches it.
func (e *Engine) PU(tags identity.Tags, addr netip.Addr) Endpoint {
	return Endpoint{pu: true, tags: tags, addr: addr.Unmap(), eng: e, pol: e.ForPU(tags), id: identity.New(tags)}
}

// Host is an endpoint without an enforcer: an external host, or a host of
// the target networks that runs none.
func Host(addr netip.Addr) Endpoint { return Endpoint{addr: addr.Unmap()} }

// IsPU reports whether an enforcer runs in front of the endpoint.
func (ep Endpoint) IsPU() bool { return ep.pu }

// Addr is the endpoint's address (invalid when unknown).
func (ep Endpoint) Addr() netip.Addr { return ep.addr }

// identity.Tags are a PU's tags (nil for a host).
func (ep Endpoint) Tags() identity.Tags { return ep.tags }

// Conn is a connection to decide: Client opens it toward Server's Port.
type Conn struct {
	Client, Server Endpoint
	Proto          ipproto.Proto
	// Port is the server's port; 0 for protocols without ports (ICMP).
	Port uint16
	// AllProtocolsCarryIdentity decides flows of every protocol as if they
	// carried identity tokens like TCP handshakes and UDP's datagram
	// handshake do: what the rules intend, the model Kubernetes
	// NetworkPolicy conformance is held to. Without it the other
	// protocols (ICMP, SCTP, ...) are decided as the dataplane does: by
	// the peer's address alone (docs/dataplane.md, Datagrams).
	AllProtocolsCarryIdentity bool
}

// Basis says on what one enforcer decided about its peer.
type Basis uint8

const (
	// NoEnforcer: this end is not a PU; nothing is decided on its side.
	NoEnforcer Basis = iota
	// PeerExcluded: the peer is in the excluded networks; the enforcer
	// lets the connection through unchecked.
	PeerExcluded
	// NoToken: the peer is inside the target networks but its handshake
	// carries no token (it runs no enforcer, or its enforcer sees this end
	// outside the target networks): denied, reason missing-token, whatever
	// the rules say.
	NoToken
	// ByIdentity: the rules decided on the peer's identity (from its
	// token) and its address.
	ByIdentity
	// ByAddress: the rules decided on the peer's address alone (a peer
	// outside the target networks, or a datagram flow): only CIDR rules and
	// rules without peers can match.
	ByAddress
)

var basisNames = [...]string{"no-enforcer", "peer-excluded", "no-token", "identity", "address"}

func (b Basis) String() string {
	if int(b) < len(basisNames) {
		return basisNames[b]
	}
	return "Basis(?)"
}

// Half is what one end's enforcer decided about its peer: the server's
// ingress or the client's egress.
type Half struct {
	Basis Basis
	// Policies are the policies selecting the PU, in file order (nil when
	// the end is not a PU).
	Policies []string
	// Decision is the verdict: Allow when nothing was checked (NoEnforcer,
	// PeerExcluded), Deny with reason.MissingToken for NoToken, else the
	// rules' decision.
	Decision
}

// Checked reports whether an enforcer on this end applied its checks
// (false: no enforcer, or the peer is excluded).
func (h *Half) Checked() bool { return h.Basis >= NoToken }

// Party names one enforcer of a connection.
type Party uint8

const (
	Nobody Party = iota
	ServerIngress
	ClientEgress
)

func (p Party) String() string {
	switch p {
	case ServerIngress:
		return "server-ingress"
	case ClientEgress:
		return "client-egress"
	}
	return "nobody"
}

// ConnDecision is the decision about a connection and why.
type ConnDecision struct {
	Ingress Half // the server's enforcer, on its PU's ingress rules
	Egress  Half // the client's enforcer, on its PU's egress rules
	// Action is Allow only when both halves allow; else the action of the
	// half that refuses the connection first (DecidedBy).
	Action Action
	Reason reason.Code
	// DecidedBy is the enforcer that refuses the connection first on the
	// wire (Nobody when it is allowed): the client's when it decides on its
	// SYN or first datagram (its peer is outside the target networks, or a
	// datagram flow), else the server's (on the SYN; the client decides at
	// the SYN-ACK).
	DecidedBy Party
}

// Allowed reports whether the connection is allowed: both halves allow it.
func (d *ConnDecision) Allowed() bool { return d.Action == Allow }

// Decide decides a connection the way the enforcers at both ends do
// (docs/policy.md): each enforcer looks at its peer only. A peer in the
// excluded networks is let through; on TCP and UDP a peer inside the target
// networks must present a token (else missing-token) and is matched by its
// identity and address; any other peer, and every peer of a flow of another
// protocol, by its address alone. The connection is allowed when both ends
// allow it.
func (e *Engine) Decide(c Conn) ConnDecision {
	carriesIdentity := c.Proto == ipproto.TCP || c.Proto == ipproto.UDP || c.AllProtocolsCarryIdentity
	port := c.Port
	if !carriesIdentity && c.Proto != ipproto.UDP {
		port = 0 // the dataplane reads the ports of TCP and UDP only
	}
	var d ConnDecision
	d.Ingress = e.half(&c.Server, &c.Client, Ingress, c.Proto, port, carriesIdentity)
	d.Egress = e.half(&c.Client, &c.Server, Egress, c.Proto, port, carriesIdentity)
	order := [2]struct {
		p Party
		h *Half
	}{{ServerIngress, &d.Ingress}, {ClientEgress, &d.Egress}}
	// The client decides first when it does so on its first packet: toward
	// a peer it matches by address, or any peer of a datagram flow.
	if d.Egress.Basis == ByAddress {
		order[0], order[1] = order[1], order[0]
	}
	d.Action = Allow
	for _, o := range order {
		if !o.h.Allowed() {
			d.Action, d.Reason, d.DecidedBy = o.h.Action, o.h.Reason, o.p
			break
		}
	}
	return d
}

// half is the decision of local's enforcer about peer.
func (e *Engine) half(local, peer *Endpoint, dir Direction, proto ipproto.Proto, port uint16, carriesIdentity bool) Half {
	if !local.pu {
		return Half{Basis: NoEnforcer, Decision: Decision{Action: Allow}}
	}
	pol := local.pol
	if local.eng != e || pol == nil {
		pol = e.ForPU(local.tags)
	}
	h := Half{Policies: pol.Policies()}
	if e.IsExcluded(peer.addr) {
		h.Basis, h.Decision = PeerExcluded, Decision{Action: Allow}
		return h
	}
	var id *identity.Identity
	h.Basis = ByAddress
	if carriesIdentity && e.targetOrUnknown(peer) {
		// The peer's enforcer sends a token only toward a peer it sees
		// inside the target networks (and not excluded).
		if !peer.pu || e.IsExcluded(local.addr) || !e.targetOrUnknown(local) {
			h.Basis = NoToken
			h.Decision = Decision{Action: Deny, Reason: reason.MissingToken}
			return h
		}
		h.Basis, id = ByIdentity, peer.id
		if peer.eng != e || id == nil {
			id = identity.New(peer.tags)
		}
	}
	if dir == Ingress {
		h.Decision = pol.Ingress(id, peer.addr, proto, port)
	} else {
		h.Decision = pol.Egress(id, peer.addr, proto, port)
	}
	return h
}

// targetOrUnknown reports whether the endpoint is inside the target networks
// as its peer's enforcer sees it; a PU whose address is unknown is taken to
// be there.
func (e *Engine) targetOrUnknown(ep *Endpoint) bool {
	if !ep.addr.IsValid() {
		return ep.pu
	}
	return e.IsTarget(ep.addr)
}
