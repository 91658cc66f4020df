// The server side of TCP: the local PU receives the SYN (its token is
// verified and ingress decided; the SYN-ACK carries our token), and SYNs
// from the peer on a 4-tuple that has a flow already.

package dataplane

import (
	"github.com/trireme-go/trireme/dataplane/packet"
	"github.com/trireme-go/trireme/flow"
	"github.com/trireme-go/trireme/identity"
	"github.com/trireme-go/trireme/ipproto"
	"github.com/trireme-go/trireme/policy"
	"github.com/trireme-go/trireme/reason"
	"github.com/trireme-go/trireme/tokens"
)

// serverSYN verifies the client's token and applies the PU's ingress rules.
func (c *slowPacket) serverSYN(ent *flow.Entry[conn]) {
	v := &ent.Value
	c.touch(ent, len(c.frame))
	if !v.target {
		if !v.decided {
			c.decide(ent, c.view.pol.Ingress(nil, c.remote, ipproto.TCP, c.localPort()))
		}
		if !v.dec.Allowed() {
			c.deny(ent, v.reason)
			return
		}
		c.synReceived(ent)
		c.e.forward(c.out, c.frame)
		return
	}
	off, tokLen, rc := c.findToken()
	if rc != reason.None {
		c.denyCode(ent, rc)
		return
	}
	payload := c.p.Frame[c.p.Payload:c.p.End]
	// The source's verification budget bounds what tokens never seen
	// before can cost (a junk token seen before costs a cache lookup).
	peer, err := c.e.tok.VerifySYNFrom(payload[:tokLen], &v.tok, c.now, c.remote)
	if err == reason.VerifyRateLimited {
		c.overBudget(ent)
		return
	}
	if err != nil {
		c.denyCode(ent, code(err))
		return
	}
	if !v.decided {
		v.peer = peer
		c.decide(ent, c.view.pol.Ingress(peer.Identity, c.remote, ipproto.TCP, c.localPort()))
	}
	if !v.dec.Allowed() {
		c.deny(ent, v.reason)
		return
	}
	f, rc := c.stripToken(off, tokLen)
	if rc != reason.None {
		c.denyCode(ent, rc)
		return
	}
	// A conforming client enforcer sends no data on the SYN (see
	// clientSYN); whatever data a SYN still carries waits for the client
	// side's decision too.
	f, _ = packet.StripSYNData(c.p)
	c.synReceived(ent)
	c.e.forward(c.out, f)
}

// synReceived enters syn-received for a new SYN; a retransmitted SYN
// leaves a flow that got further (syn-ack-sent) where it is.
func (c *slowPacket) synReceived(ent *flow.Entry[conn]) {
	if ent.State == flow.StateNew {
		c.sh.SetState(ent, flow.SynReceived, c.ns)
	}
}

// peerSYN handles a SYN from the peer on a known 4-tuple that does not
// retransmit the flow's own SYN: a new connection attempt. The rule: a SYN
// changes a flow only once it is authenticated (the token of a peer inside
// the target networks verified, the PU's ingress rules allowing it), and
// never while the flow's connection may be alive:
//   - the flow is over (closing after FINs both ways, i.e. TIME_WAIT reuse;
//     reset; denied or revoked): the new connection replaces it;
//   - a handshake is in progress: an authenticated SYN replaces it (the
//     client gave up on it); the lower end of a simultaneous open keeps
//     its own;
//   - the connection is established: the flow stays as it is and the SYN
//     goes to the PU, whose TCP is the judge (RFC 5961 §4): a live
//     connection answers it with a challenge ACK; a connection that is gone
//     lets the SYN reach a listener, whose SYN-ACK then ends the old flow
//     (promoteSuccessor).
//
// A SYN that fails authentication or policy is dropped with its reason and
// recorded; the flow is untouched.
func (c *slowPacket) peerSYN(ent *flow.Entry[conn]) {
	v := &ent.Value
	over := ent.State.Refused() || ent.State == flow.Closing || v.reset
	var tok tokens.Conn
	peer, d, rc := c.authSYN(v.target, &tok)
	if rc != reason.None {
		c.touch(ent, len(c.frame))
		if over && rc != reason.VerifyRateLimited { // over budget: dropped without a RST (overBudget)
			c.refuse(rc, nil) // as to a SYN without state: a prompt RST
		} else {
			c.e.drop(c.out, rc)
		}
		c.recordRefused(ent, rc, peer, d)
		return
	}
	switch {
	case over || v.role == roleServer && ent.State.HalfOpen():
		c.e.finish(c.pu, ent, EndReplaced, c.ns, c.out)
		c.sh.Delete(ent)
		c.newConnection()
	case v.role == roleClient && ent.State == flow.SynSent:
		// Simultaneous open: both enforcers compare (local address, port)
		// with (remote address, port); the higher end yields and becomes
		// the server of the peer's SYN, the lower end drops the crossing
		// SYN. The handshake then completes as an ordinary one.
		c.touch(ent, len(c.frame))
		k := &ent.Key
		if cmpEnd(k.Local, k.LocalPort, k.Remote, k.RemotePort) > 0 {
			c.sh.Delete(ent)
			c.newConnection()
			return
		}
		c.e.drop(c.out, reason.InvalidState)
	case v.role == roleServer && ent.State == flow.Established:
		c.successorSYN(ent, &tok)
	default:
		c.touch(ent, len(c.frame))
		c.e.drop(c.out, reason.InvalidState)
	}
}

// authSYN authenticates and decides a SYN from the peer without changing
// any flow: the token of a peer inside the target networks is verified into
// tok, and the PU's ingress rules decide. rc is why it is refused (None:
// allowed).
func (c *slowPacket) authSYN(target bool, tok *tokens.Conn) (peer *tokens.Peer, d policy.Decision, rc reason.Code) {
	var id *identity.Identity
	if target {
		_, n, rc := c.findToken()
		if rc != reason.None {
			return nil, d, rc
		}
		var err error
		if peer, err = c.e.tok.VerifySYNFrom(c.p.Frame[c.p.Payload:c.p.Payload+n], tok, c.now, c.remote); err != nil {
			return nil, d, code(err)
		}
		id = peer.Identity
	}
	d = c.view.pol.Ingress(id, c.remote, ipproto.TCP, c.localPort())
	if !d.Allowed() {
		rc = d.Reason
		if rc == reason.None {
			rc = reason.PolicyDenied
		}
	}
	return peer, d, rc
}

// recordRefused writes the record of a SYN refused on a 4-tuple whose flow
// it did not change (the flow keeps its own record).
func (c *slowPacket) recordRefused(ent *flow.Entry[conn], rc reason.Code, peer *tokens.Peer, d policy.Decision) {
	r := flow.Entry[conn]{Key: ent.Key, State: flow.Denied, Created: c.ns, LastSeen: c.ns}
	r.Packets[c.dir&1], r.Bytes[c.dir&1] = 1, uint64(len(c.frame))
	r.Value = conn{role: roleServer, target: ent.Value.target, peer: peer, reason: rc, decidedAt: c.ns}
	if rc == d.Reason || d.Rule != nil {
		r.Value.dec, r.Value.decided = d, true
	}
	c.e.record(c.pu, &r, EndRefused, c.ns)
}

// successorSYN passes an authenticated, allowed SYN of a new connection to
// the PU while the established flow of its 4-tuple stays as it is. A server
// flow no longer needs its handshake state once established: the new
// connection's (tok) takes its place, for the SYN-ACK if one comes.
func (c *slowPacket) successorSYN(ent *flow.Entry[conn], tok *tokens.Conn) {
	v, p := &ent.Value, c.p
	c.touch(ent, len(c.frame))
	f := c.frame
	synLen := 1 + uint32(c.dataLen())
	if v.target {
		off, n, _ := c.findToken() // authSYN found it
		var rc reason.Code
		if f, rc = c.stripToken(off, n); rc != reason.None {
			c.e.drop(c.out, rc)
			return
		}
		f, _ = packet.StripSYNData(p)
		v.tok = *tok
	}
	v.succ, v.succISN, v.succEnd, v.succScale = true, p.Seq, p.Seq+synLen, noScale
	if sh, ok := packet.WindowScale(p); ok {
		v.succScale = sh
	}
	c.e.forward(c.out, f)
}

// promoteSuccessor: the PU answered the successor SYN with a SYN-ACK, so
// its TCP has no connection left on the 4-tuple: the old flow ends
// (replaced) and the new connection's flow takes its place, in
// syn-received. It returns nil when the new flow cannot be made (the PU's
// SYN-ACK is then dropped).
func (c *slowPacket) promoteSuccessor(old *flow.Entry[conn]) *flow.Entry[conn] {
	v := old.Value
	c.e.finish(c.pu, old, EndReplaced, c.ns, c.out)
	c.sh.Delete(old)
	ent, rc := c.insert()
	if ent == nil {
		c.e.drop(c.out, rc)
		return nil
	}
	n := &ent.Value
	n.role, n.target, n.tok = roleServer, v.target, v.tok
	n.clientISN, n.synLen = v.succISN, v.succEnd-v.succISN
	q := &n.seq
	q.nxt[sideRemote], q.sent[sideRemote] = v.succEnd, true
	q.rcv[sideLocal], q.edge[sideLocal], q.acked[sideLocal] = v.succISN+1, v.succISN+1, true
	q.offered[sideRemote], q.offered[sideLocal] = v.succScale, noScale
	var id *identity.Identity
	if n.target {
		n.peer = n.tok.Peer()
		id = n.peer.Identity
	}
	c.decide(ent, c.view.pol.Ingress(id, c.remote, ipproto.TCP, c.localPort()))
	if !n.dec.Allowed() {
		// The policy changed since the SYN was passed on.
		c.sh.SetState(ent, flow.Denied, c.ns)
		c.e.record(c.pu, ent, EndDenied, c.ns)
		c.e.drop(c.out, n.reason)
		return nil
	}
	c.sh.SetState(ent, flow.SynReceived, c.ns)
	return ent
}

// server handles a packet of a flow the PU accepted.
func (c *slowPacket) server(ent *flow.Entry[conn]) {
	p, v := c.p, &ent.Value
	syn, ack := p.Flags&packet.SYN != 0, p.Flags&packet.ACK != 0
	if c.dir == FromNet && syn && !ack {
		// A retransmission (another ISN goes to peerSYN).
		switch {
		case ent.State.Refused():
			c.touch(ent, len(c.frame))
			c.refuse(v.reason, ent)
		case ent.State == flow.SynReceived || ent.State == flow.SynAckSent:
			c.serverSYN(ent) // retransmission: verified again, not re-decided
		default:
			c.touch(ent, len(c.frame))
			c.e.drop(c.out, reason.InvalidState)
		}
		return
	}
	if ent.State.Refused() {
		c.touch(ent, len(c.frame))
		c.e.drop(c.out, v.reason)
		return
	}
	if c.dir == FromApp && syn && ack {
		if v.succ && seqLT(v.succISN, p.Ack) && seqLE(p.Ack, v.succEnd) {
			// The PU's TCP accepted the new connection's SYN: it no
			// longer has the old one.
			ent = c.promoteSuccessor(ent)
			if ent == nil {
				return
			}
			v = &ent.Value
		}
		c.touch(ent, len(c.frame))
		if ent.State != flow.SynReceived && ent.State != flow.SynAckSent {
			c.e.drop(c.out, reason.InvalidState)
			return
		}
		v.serverISN = p.Seq
		v.seq.syn(sideLocal, p, 1+uint32(p.PayloadLen()))
		if !v.target {
			c.sh.SetState(ent, flow.SynAckSent, c.ns)
			c.e.forward(c.out, c.frame)
			return
		}
		tok, err := c.e.tok.AppendSYNACK(c.out.tok[:0], c.pu.local(), &v.tok, c.now)
		if err != nil {
			c.e.drop(c.out, code(err))
			return
		}
		f, rc := c.insertToken(tok)
		if rc != reason.None {
			c.e.drop(c.out, rc)
			return
		}
		c.sh.SetState(ent, flow.SynAckSent, c.ns)
		c.e.forward(c.out, f)
		return
	}
	switch ent.State {
	case flow.SynReceived:
		c.touch(ent, len(c.frame))
		c.e.drop(c.out, reason.InvalidState)
	case flow.SynAckSent:
		if c.dir == FromNet && ack && !syn {
			c.serverACK(ent)
			return
		}
		c.touch(ent, len(c.frame))
		if c.dir == FromApp {
			// Data (or a FIN) before the handshake ACK (TCP Fast Open
			// server): the PU accepted the connection; the client's
			// enforcer still decides whether it gets it.
			c.e.forward(c.out, c.frame)
			return
		}
		c.e.drop(c.out, reason.InvalidState)
	default:
		c.established(ent)
	}
}

// serverACK: the client's handshake ACK must carry the ACK token; until it
// arrives the flow stays pending (the server's kernel retransmits its
// SYN-ACK, which the client's enforcer answers with the token-ACK again).
func (c *slowPacket) serverACK(ent *flow.Entry[conn]) {
	v := &ent.Value
	c.touch(ent, len(c.frame))
	if !v.target {
		c.establish(ent)
		c.e.forward(c.out, c.frame)
		return
	}
	off, n, rc := c.findToken()
	if rc == reason.None {
		if err := c.e.tok.VerifyACK(c.p.Frame[c.p.Payload:c.p.Payload+n], &v.tok); err != nil {
			rc = code(err)
		}
	}
	if rc != reason.None {
		c.e.drop(c.out, rc)
		return
	}
	fin := c.p.Flags&packet.FIN != 0
	f, rc := c.stripToken(off, n)
	if rc != reason.None {
		c.e.drop(c.out, rc)
		return
	}
	if fin {
		c.sawFIN(ent, true) // on the token-verified ACK
	}
	c.establish(ent)
	c.e.forward(c.out, f)
}
