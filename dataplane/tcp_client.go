// The client side of TCP: the local PU opened the connection (its SYN
// carries our token; the peer's SYN-ACK is verified; our token-ACK closes
// the exchange).

package dataplane

import (
	"github.com/trireme-go/trireme/dataplane/packet"
	"github.com/trireme-go/trireme/flow"
	"github.com/trireme-go/trireme/ipproto"
	"github.com/trireme-go/trireme/reason"
	"github.com/trireme-go/trireme/tokens"
)

// clientSYN adds the SYN token toward a target peer; toward an external one
// the PU's egress CIDR rules decide now.
func (c *slowPacket) clientSYN(ent *flow.Entry[conn]) {
	v := &ent.Value
	c.touch(ent, len(c.frame))
	if !v.target {
		if !v.decided {
			c.decide(ent, c.view.pol.Egress(nil, c.remote, ipproto.TCP, c.remotePort()))
		}
		if !v.dec.Allowed() {
			c.deny(ent, v.reason)
			return
		}
		c.sh.SetState(ent, flow.SynSent, c.ns)
		c.e.forward(c.out, c.frame)
		return
	}
	// The peer's enforcer decides at its SYN-ACK whether this PU may
	// reach it: data on the SYN (TCP Fast Open, or plain SYN data) must not
	// reach the server before, so it is taken off, with the Fast Open
	// option; the PU's kernel sends it again after the handshake. It also
	// makes room for the token.
	c.frame, _ = packet.StripSYNData(c.p)
	tok, err := c.e.tok.AppendSYN(c.out.tok[:0], c.pu.local(), &v.tok, c.now)
	if err != nil {
		c.denyCode(ent, code(err))
		return
	}
	f, rc := c.insertToken(tok)
	if rc != reason.None {
		c.denyCode(ent, rc)
		return
	}
	c.sh.SetState(ent, flow.SynSent, c.ns)
	c.e.forward(c.out, f)
}

// client handles a packet of a flow the PU opened.
func (c *slowPacket) client(ent *flow.Entry[conn]) {
	p, v := c.p, &ent.Value
	syn, ack := p.Flags&packet.SYN != 0, p.Flags&packet.ACK != 0
	if ent.State.Refused() {
		if c.dir == FromApp && syn && !ack && p.Seq != v.clientISN {
			// A new connection reusing the 4-tuple of a refused one (a
			// refused connection leaves no TIME_WAIT, so the kernel soon
			// reuses its port): decided afresh, under today's policy.
			c.e.finish(c.pu, ent, EndReplaced, c.ns, c.out)
			c.sh.Delete(ent)
			c.newConnection()
			return
		}
		c.touch(ent, len(c.frame))
		if c.dir == FromApp && syn && !ack {
			// Retransmitted SYN of a refused connection: same answer.
			c.refuse(v.reason, ent)
			return
		}
		c.e.drop(c.out, v.reason)
		return
	}
	if c.dir == FromApp && syn && !ack {
		if p.Seq != v.clientISN {
			// A new connection on the same 4-tuple: start over.
			c.e.finish(c.pu, ent, EndReplaced, c.ns, c.out)
			c.sh.Delete(ent)
			c.newConnection()
			return
		}
		if ent.State == flow.SynSent {
			c.clientSYN(ent) // retransmission: the same token bytes
			return
		}
		c.touch(ent, len(c.frame))
		c.e.drop(c.out, reason.InvalidState)
		return
	}
	if c.dir == FromNet && syn && ack {
		c.clientSYNACK(ent)
		return
	}
	switch ent.State {
	case flow.SynSent:
		c.touch(ent, len(c.frame))
		c.e.drop(c.out, reason.InvalidState)
	case flow.SynAckReceived:
		if c.dir == FromApp && ack && p.Ack == v.serverISN+1 {
			c.clientACK(ent)
			return
		}
		c.touch(ent, len(c.frame))
		if c.dir == FromNet {
			// The server sent data before our ACK (TCP Fast Open): both
			// ends have decided, the data passes.
			c.e.forward(c.out, c.frame)
			return
		}
		c.e.drop(c.out, reason.InvalidState)
	default:
		c.established(ent)
	}
}

// clientSYNACK: the server's SYN-ACK. Verify its token and apply the PU's
// egress rules (mutual authorization).
func (c *slowPacket) clientSYNACK(ent *flow.Entry[conn]) {
	p, v := c.p, &ent.Value
	c.touch(ent, len(c.frame))
	switch ent.State {
	case flow.SynSent:
		if !seqLT(v.clientISN, p.Ack) || !seqLE(p.Ack, v.clientISN+v.synLen) {
			// Not an answer to this SYN (RFC 793: not acceptable in
			// SYN-SENT): nothing changes.
			c.e.drop(c.out, reason.OutOfWindow)
			return
		}
	case flow.SynAckReceived:
		if p.Seq != v.serverISN {
			c.e.drop(c.out, reason.InvalidState)
			return
		}
		// Retransmitted before the PU acknowledged it: deliver again.
		c.deliverSYNACK(ent, false)
		return
	case flow.Established, flow.Closing:
		if p.Seq != v.serverISN {
			c.e.drop(c.out, reason.InvalidState)
			return
		}
		// The server did not get our token-ACK (lost): send it again.
		if v.target {
			c.injectTokenACK(ent, true)
			c.e.drop(c.out, reason.None)
			return
		}
		c.e.forward(c.out, c.frame)
		return
	default:
		c.e.drop(c.out, reason.InvalidState)
		return
	}
	v.serverISN = p.Seq
	c.deliverSYNACK(ent, true)
}

func (c *slowPacket) deliverSYNACK(ent *flow.Entry[conn], first bool) {
	v := &ent.Value
	if !v.target {
		if first {
			v.seq.syn(sideRemote, c.p, 1+uint32(c.p.PayloadLen()))
			c.sh.SetState(ent, flow.SynAckReceived, c.ns)
		}
		c.e.forward(c.out, c.frame)
		return
	}
	off, n, rc := c.findToken()
	if rc == reason.None {
		_, err := c.e.tok.VerifySYNACK(c.p.Frame[c.p.Payload:c.p.Payload+n], &v.tok, c.now)
		if err != nil {
			rc = code(err)
		}
	}
	if rc != reason.None {
		if first {
			c.clientRefuse(ent, rc)
		} else {
			c.e.drop(c.out, rc)
		}
		return
	}
	if first {
		v.peer = v.tok.Peer()
		c.decide(ent, c.view.pol.Egress(v.peer.Identity, c.remote, ipproto.TCP, c.remotePort()))
		if !v.dec.Allowed() {
			c.clientRefuse(ent, v.reason)
			return
		}
	}
	f, rc := c.stripToken(off, n)
	if rc != reason.None {
		c.e.drop(c.out, rc)
		return
	}
	if first {
		v.seq.syn(sideRemote, c.p, 1+uint32(c.p.PayloadLen()))
		c.sh.SetState(ent, flow.SynAckReceived, c.ns)
	}
	c.e.forward(c.out, f)
}

// clientRefuse denies a connection at the SYN-ACK: a RST to the PU (its
// connect fails now) and one to the server (its half-open state goes).
func (c *slowPacket) clientRefuse(ent *flow.Entry[conn], rc reason.Code) {
	p, v := c.p, &ent.Value
	v.reason = rc
	if !v.decided {
		v.decidedAt = c.ns
	}
	toPU := packet.BuildTCP(c.out.injectBuf(), p, &packet.Segment{
		Flags: packet.RST | packet.ACK, Seq: p.Seq + 1, Ack: p.Ack,
	})
	toServer := packet.BuildTCP(c.out.injectBuf(), p, &packet.Segment{
		Reverse: true, Flags: packet.RST, Seq: p.Ack,
	})
	c.out.inject(c.pu, ToPU, toPU)
	c.out.inject(c.pu, ToNet, toServer)
	c.e.stats.resets.Add(2)
	c.e.stats.injected.Add(2)
	c.out.Verdict, c.out.Reason, c.out.Frame = Reset, rc, nil
	c.e.stats.count(rc)
	c.sh.SetState(ent, flow.Denied, c.ns)
	c.e.record(c.pu, ent, EndDenied, c.ns)
}

// clientACK: the PU's handshake ACK carries the ACK token. If the kernel
// put data on it, a separate token-ACK goes first and the data is
// forwarded untouched.
func (c *slowPacket) clientACK(ent *flow.Entry[conn]) {
	p, v := c.p, &ent.Value
	c.touch(ent, len(c.frame))
	v.ackWindow = p.Window
	f := c.frame
	if v.target {
		pure := p.PayloadLen() == 0 && p.Flags&(packet.FIN|packet.RST|packet.SYN) == 0
		if pure {
			tok, err := c.e.tok.AppendACK(c.out.tok[:0], &v.tok)
			if err != nil {
				c.e.drop(c.out, code(err))
				return
			}
			var rc reason.Code
			f, rc = c.insertToken(tok)
			if rc != reason.None {
				// No room in this ACK's options: send the token separately.
				f = c.frame
				c.injectTokenACK(ent, false)
			}
		} else {
			c.injectTokenACK(ent, false)
		}
	}
	if p.Flags&packet.FIN != 0 {
		c.sawFIN(ent, true) // the PU's own
	}
	c.establish(ent)
	c.e.forward(c.out, f)
}

// injectTokenACK crafts a pure ACK carrying the ACK token. fromSYNACK: the
// template is the server's retransmitted SYN-ACK (reverse it); otherwise the
// PU's own ACK.
func (c *slowPacket) injectTokenACK(ent *flow.Entry[conn], fromSYNACK bool) {
	p, v := c.p, &ent.Value
	tok, err := c.e.tok.AppendACK(c.out.tok[:0], &v.tok)
	if err != nil {
		return
	}
	seg := packet.Segment{Flags: packet.ACK, Seq: p.Seq, Ack: p.Ack, Window: p.Window,
		Options: tokens.Option[:], Payload: tok}
	if fromSYNACK {
		seg = packet.Segment{Reverse: true, Flags: packet.ACK, Seq: p.Ack, Ack: p.Seq + 1,
			Window: v.ackWindow, Options: tokens.Option[:], Payload: tok}
	}
	c.out.inject(c.pu, ToNet, packet.BuildTCP(c.out.injectBuf(), p, &seg))
	c.e.stats.injected.Add(1)
}
