// Datagrams: UDP, ICMP and other non-TCP protocols, and ICMP errors that
// quote a flow of the PU.

package dataplane

import (
	"github.com/trireme-go/trireme/flow"
	"github.com/trireme-go/trireme/ipproto"
	"github.com/trireme-go/trireme/policy"
	"github.com/trireme-go/trireme/reason"
	"github.com/trireme-go/trireme/tokens"
)

// datagram handles UDP, ICMP and other non-TCP protocols: the PU's CIDR
// rules decide on a flow's first packet (peer identity is not carried),
// later packets and replies of an allowed flow pass.
func (c *slowPacket) datagram() {
	if c.p.IsICMPError() && c.icmpError() {
		return
	}
	if c.identityDatagram() {
		c.udp()
		return
	}
	c.sh = c.e.table.Shard(&c.key)
	c.sh.Lock()
	defer c.sh.Unlock()
	ent := c.sh.Get(&c.key)
	if ent != nil && c.sh.Expired(ent, c.ns) {
		c.e.finish(c.pu, ent, EndExpired, c.ns, c.out)
		c.sh.Delete(ent)
		ent = nil
	}
	if ent != nil {
		c.knownDatagram(ent)
		return
	}
	ent, rc := c.insert()
	if ent == nil {
		c.e.drop(c.out, rc)
		return
	}
	ent.Value.role = roleDatagram
	ent.Value.firstDir = c.dir
	ent.Value.target = c.view.eng.IsTarget(c.remote)
	d := c.decideAlone()
	c.decide(ent, d)
	c.touch(ent, len(c.frame))
	if !d.Allowed() {
		c.sh.SetState(ent, flow.Denied, c.ns)
		c.e.record(c.pu, ent, EndDenied, c.ns)
		c.e.drop(c.out, ent.Value.reason)
		return
	}
	c.establish(ent)
	c.consumeHandshake()
}

// consumeHandshake forwards a datagram of a flow decided by CIDR rules,
// unless it is a datagram handshake message from the network: the peer's
// enforcer sees this PU inside the target networks, this one sees the peer
// outside (their configurations differ). The message is consumed, never
// delivered; the peer's enforcer, unanswered, denies its flow
// missing-token, as a TCP client's does at a SYN-ACK without a token.
func (c *slowPacket) consumeHandshake() {
	if c.dir == FromNet && c.p.Proto == ipproto.UDP && tokens.KindOf(c.p.UDPPayload()) != tokens.NotHandshake {
		c.e.drop(c.out, reason.None)
		return
	}
	c.e.forward(c.out, c.frame)
}

// knownDatagram handles a datagram of a flow decided by CIDR rules.
func (c *slowPacket) knownDatagram(ent *flow.Entry[conn]) {
	c.touch(ent, len(c.frame))
	if ent.State.Refused() {
		c.e.drop(c.out, ent.Value.reason)
		return
	}
	if c.p.IsEcho() && c.key.LocalPort == 0 && c.key.RemotePort == 0 && !c.echoFits(ent) {
		// An echo of identifier 0 is keyed like any other ICMP message
		// between the two addresses (both ports 0): its direction is not
		// in its key, so it is checked here; one that goes the wrong way
		// for the flow is decided by the rules of its own direction.
		d := c.decideAlone()
		if !d.Allowed() {
			rc := d.Reason
			if rc == reason.None {
				rc = reason.PolicyDenied
			}
			c.e.drop(c.out, rc)
			return
		}
	}
	c.consumeHandshake()
}

// echoFits reports whether an echo goes the way its flow was opened: a
// request in the direction of the flow's first packet, a reply against
// it. A restored flow's first direction is not known: nothing fits it.
func (c *slowPacket) echoFits(ent *flow.Entry[conn]) bool {
	v := &ent.Value
	if v.restored || v.pickedUp {
		return false
	}
	return c.p.IsEchoRequest() == (c.dir == v.firstDir)
}

// decideAlone applies the PU's rules to the packet as the first of a
// datagram flow of its direction, without keeping a flow.
func (c *slowPacket) decideAlone() policy.Decision {
	var port uint16
	if c.dir == FromApp {
		if c.p.Proto.HasPorts() {
			port = c.remotePort()
		}
		return c.view.pol.Egress(nil, c.remote, c.p.Proto, port)
	}
	if c.p.Proto == ipproto.UDP {
		port = c.localPort()
	}
	return c.view.pol.Ingress(nil, c.remote, c.p.Proto, port)
}

// icmpError handles an ICMP error that quotes a packet of a flow of the PU.
// An error travels toward the sender of the packet it quotes: from the
// network to the PU when the PU sent it (from its destination or from a
// router on the way), from the PU back to the sender when the PU received
// it; and it is no larger than an error may be (576 bytes IPv4, RFC 1812
// §4.3.2.3; 1280 IPv6, RFC 4443 §2.4). Such an error of a flow that is not
// denied passes whatever the rules say about ICMP (path MTU discovery,
// unreachable ports and hosts of allowed connections must reach their
// ends); one that does not fit its flow is dropped (bad-icmp-error): it
// would carry data past the policy. It reports whether it decided; an
// error quoting no flow of the PU is decided by the rules like any
// datagram.
func (c *slowPacket) icmpError() bool {
	p := c.p
	src, dst, proto, sport, dport, ok := p.Quoted()
	if !ok {
		return false
	}
	var k flow.Key
	k.VLAN, k.PU, k.Proto = c.key.VLAN, c.key.PU, proto
	// The PU sent the quoted packet: the error must come to it.
	k.Local, k.Remote, k.LocalPort, k.RemotePort = src.As16(), dst.As16(), sport, dport
	fits := c.dir == FromNet && p.Dst == src
	sh := c.e.table.Shard(&k)
	sh.Lock()
	ent := sh.Get(&k)
	if ent == nil {
		sh.Unlock()
		// The PU received the quoted packet: the error must go from it
		// back to the sender.
		k.Local, k.Remote, k.LocalPort, k.RemotePort = dst.As16(), src.As16(), dport, sport
		fits = c.dir == FromApp && p.Src == dst && p.Dst == src
		sh = c.e.table.Shard(&k)
		sh.Lock()
		ent = sh.Get(&k)
	}
	defer sh.Unlock()
	if ent == nil || sh.Expired(ent, c.ns) {
		return false
	}
	max := 576
	if p.IPv6 {
		max = 1280
	}
	if !fits || p.End-p.L3 > max {
		c.e.drop(c.out, reason.BadICMPError)
		return true
	}
	if ent.State.Refused() || ent.Value.reset {
		return false
	}
	sh.Touch(ent, flow.Dir(c.dir), len(c.frame), c.ns)
	if v := &ent.Value; c.dir == FromNet && v.role == roleDatagram && v.dg.identity && ent.State == flow.Established &&
		p.Src == k.RemoteAddr() && p.AdministrativelyProhibited() {
		// The peer's enforcer does not know this flow (it answers a
		// datagram without a handshake): forget it too, so that the
		// PU's next datagram starts a new handshake. The error goes on
		// to the PU, whose datagram was lost.
		c.e.finish(c.pu, ent, EndReset, c.ns, c.out)
		sh.Delete(ent)
	}
	c.e.forward(c.out, c.frame)
	return true
}
