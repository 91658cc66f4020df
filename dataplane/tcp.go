// The TCP state machine: dispatch of a slow-path segment by the flow's
// state and the local PU's role, and the steps both sides share (decide,
// deny, refuse, RSTs, establish).

package dataplane

import (
	"bytes"
	"time"

	"github.com/trireme-go/trireme/dataplane/packet"
	"github.com/trireme-go/trireme/flow"
	"github.com/trireme-go/trireme/ipproto"
	"github.com/trireme-go/trireme/policy"
	"github.com/trireme-go/trireme/reason"
	"github.com/trireme-go/trireme/tokens"
)

func (c *slowPacket) tcp() {
	c.sh = c.e.table.Shard(&c.key)
	c.sh.Lock()
	defer c.sh.Unlock()
	p := c.p
	ent := c.sh.Get(&c.key)
	if ent != nil && c.sh.Expired(ent, c.ns) {
		c.e.finish(c.pu, ent, EndExpired, c.ns, c.out)
		c.sh.Delete(ent)
		ent = nil
	}
	syn, ack, rst := p.Flags&packet.SYN != 0, p.Flags&packet.ACK != 0, p.Flags&packet.RST != 0
	if ent == nil {
		switch {
		case syn && !ack && !rst:
			c.newConnection()
		default:
			c.midStream()
		}
		return
	}
	if ent.Value.revoked && !rst && !(syn && !ack) {
		c.revokedPacket(ent)
		return
	}
	if rst {
		c.rst(ent)
		return
	}
	if syn && !ack && c.dir == FromNet && (ent.Value.role != roleServer || p.Seq != ent.Value.clientISN) {
		// A SYN from the peer that does not retransmit the flow's own.
		c.peerSYN(ent)
		return
	}
	if ent.Value.reset && !(syn && !ack) {
		c.touch(ent, len(c.frame))
		c.e.drop(c.out, reason.InvalidState)
		return
	}
	switch ent.Value.role {
	case roleClient:
		c.client(ent)
	case roleServer:
		c.server(ent)
	default:
		c.e.drop(c.out, reason.InvalidState)
	}
	if !syn && c.out.Verdict == Forward {
		c.observe(ent)
	}
}

// observe updates the flow's sequence view with the packet being
// forwarded (not on flows whose packets bypass the enforcer: pointless).
func (c *slowPacket) observe(ent *flow.Entry[conn]) {
	if v, p := &ent.Value, c.p; !v.bypass {
		v.seq.observe(c.side(), p.Flags, p.Seq, p.Ack, p.Window, p.PayloadLen())
	}
}

// newConnection handles a SYN without state: an app SYN makes the PU a
// client, a net SYN a server.
func (c *slowPacket) newConnection() {
	ent, rc := c.insert()
	if ent == nil {
		c.refuse(rc, nil)
		return
	}
	p := c.p
	ent.Value.target = c.view.eng.IsTarget(c.remote)
	ent.Value.clientISN = p.Seq
	ent.Value.synLen = 1 + uint32(c.dataLen())
	ent.Value.seq.syn(c.side(), p, ent.Value.synLen)
	if c.dir == FromApp {
		ent.Value.role = roleClient
		c.clientSYN(ent)
	} else {
		ent.Value.role = roleServer
		c.serverSYN(ent)
	}
}

// dataLen is the TCP payload length without our token frame (the
// sequence space the peer's kernel used).
func (c *slowPacket) dataLen() int {
	n := c.p.PayloadLen()
	if _, ok := packet.FindOption(c.p, tokens.Option); ok {
		if t, err := tokens.FrameLen(c.p.Frame[c.p.Payload:c.p.End]); err == nil {
			n -= t
		}
	}
	return n
}

// findToken locates the marker option and the token frame of c.p.
func (c *slowPacket) findToken() (off, n int, rc reason.Code) {
	off, ok := packet.FindOption(c.p, tokens.Option)
	if !ok {
		return 0, 0, reason.MissingToken
	}
	n, rc = c.tokenLen()
	return off, n, rc
}

// tokenLen is the length of the token frame at the start of c.p's payload
// (missing-token for none, malformed-token...).
func (c *slowPacket) tokenLen() (int, reason.Code) {
	n, err := tokens.FrameLen(c.p.Frame[c.p.Payload:c.p.End])
	if err != nil {
		return 0, code(err)
	}
	return n, reason.None
}

func code(err error) reason.Code {
	if rc, ok := err.(reason.Code); ok {
		return rc
	}
	return reason.MalformedToken
}

// decide records the policy decision of a flow.
func (c *slowPacket) decide(ent *flow.Entry[conn], d policy.Decision) {
	v := &ent.Value
	v.dec, v.decided, v.decidedAt = d, true, c.ns
	if !d.Allowed() {
		v.reason = d.Reason
		if v.reason == reason.None {
			v.reason = reason.PolicyDenied
		}
	}
}

// denyCode refuses a connection for a token or packet problem (no policy
// decision was made).
func (c *slowPacket) denyCode(ent *flow.Entry[conn], rc reason.Code) {
	ent.Value.reason = rc
	if !ent.Value.decided {
		ent.Value.decidedAt = c.ns
	}
	c.deny(ent, rc)
}

// deny refuses the connection of ent: the client gets a RST now. A net SYN
// (server side) is answered by a RST toward the client through the network;
// an app SYN gets a RST toward the PU. The flow stays in Denied for the
// denied lifetime so that retransmissions get the same answer. A denial
// for a token failure (peer unverified) keeps no state: it is recorded and
// the entry removed, so that forged SYNs cannot fill the table.
func (c *slowPacket) deny(ent *flow.Entry[conn], rc reason.Code) {
	c.refuse(rc, ent)
	if ent.State != flow.Denied {
		c.sh.SetState(ent, flow.Denied, c.ns)
		c.e.record(c.pu, ent, EndDenied, c.ns)
	}
	if !ent.Value.decided {
		c.sh.Delete(ent)
	}
}

// overBudget drops a SYN whose token could not be verified for lack of
// verification budget: no RST (the client's kernel retransmits the SYN a
// second later, when the budget has refilled: a burst of legitimate first
// contacts is delayed, not refused), no state; recorded like a token
// failure.
func (c *slowPacket) overBudget(ent *flow.Entry[conn]) {
	ent.Value.reason, ent.Value.decidedAt = reason.VerifyRateLimited, c.ns
	c.e.record(c.pu, ent, EndDenied, c.ns)
	c.sh.Delete(ent)
	c.e.drop(c.out, reason.VerifyRateLimited)
}

// refuse drops the SYN and answers it with a RST to the client.
func (c *slowPacket) refuse(rc reason.Code, ent *flow.Entry[conn]) {
	p := c.p
	rst := packet.BuildTCP(c.out.injectBuf(), p, &packet.Segment{
		Reverse: true, Flags: packet.RST | packet.ACK,
		Ack: p.Seq + 1 + uint32(c.dataLen()),
	})
	c.e.stats.resets.Add(1)
	c.e.stats.injected.Add(1)
	if c.dir == FromApp {
		c.out.inject(c.pu, ToPU, rst)
		c.out.Verdict, c.out.Reason, c.out.Frame = Reset, rc, nil
		c.e.stats.count(rc)
		return
	}
	c.out.inject(c.pu, ToNet, rst)
	c.e.drop(c.out, rc)
}

// rst handles a RST on a known flow: it ends the flow only when the
// receiving TCP would accept it (see seq.go); one inside the receiver's
// window goes on without changing the flow (the receiver challenges it),
// one outside is dropped. A reset flow lingers, unauthorized, for the
// reset lifetime, so that repeated RSTs still pass (a handshake does not).
func (c *slowPacket) rst(ent *flow.Entry[conn]) {
	v := &ent.Value
	c.touch(ent, len(c.frame))
	if ent.State.Refused() {
		c.e.drop(c.out, v.reason)
		return
	}
	if v.reset {
		c.pass()
		return
	}
	switch c.rstFit(ent) {
	case rstExact:
		// An established flow lingers, unauthorized, for the reset
		// lifetime so that the RSTs answering packets in flight still
		// pass; a handshake a RST ended (a refused SYN) leaves nothing
		// behind: its end keeps no state, so a denied connection costs
		// the node one entry (the refusing side's), not two.
		c.e.finish(c.pu, ent, EndReset, c.ns, c.out)
		v.reset = true
		if ent.State.HalfOpen() {
			c.sh.Delete(ent)
		} else {
			c.sh.SetState(ent, flow.Reset, c.ns)
		}
		c.pass()
	case rstOutOfWindow:
		if c.logged {
			c.pass() // the kernel passed it; the PU's TCP ignores it
			return
		}
		c.e.drop(c.out, reason.OutOfWindow)
	default:
		c.pass()
	}
}

// rstFit judges a RST against the flow's sequence window. On a flow whose
// packets bypass the enforcer the window it saw is out of date: a RST from
// the PU is its own TCP's (its connection is gone); one from the network
// goes to the PU, whose TCP applies RFC 5961 itself, and a probe follows
// it to learn the outcome.
func (c *slowPacket) rstFit(ent *flow.Entry[conn]) rstFit {
	v, p := &ent.Value, c.p
	hasACK := p.Flags&packet.ACK != 0
	if c.dir == FromApp && v.succ && hasACK && seqLT(v.succISN, p.Ack) && seqLE(p.Ack, v.succEnd) {
		// The PU refuses the successor SYN: it has no connection and no
		// listener on the 4-tuple.
		return rstExact
	}
	if v.bypass {
		if c.dir == FromApp {
			return rstExact
		}
		c.probe(ent)
		return rstUnknown
	}
	client := sideLocal
	switch {
	case v.pickedUp || v.restored:
		client = -1 // no SYN seen
	case v.role == roleServer:
		client = sideRemote
	}
	return v.seq.rst(c.side(), p.Seq, p.Ack, hasACK, client, v.clientISN)
}

// probeEvery bounds RST probes per flow.
const probeEvery = int64(200 * time.Millisecond)

// probe sends the PU, after the RST being forwarded, an ACK that its TCP
// ignores while it holds the connection (far outside the window: at most a
// duplicate ACK) and answers with a RST once the connection is gone (a
// segment for no connection): that RST, from the PU, then ends the flow.
func (c *slowPacket) probe(ent *flow.Entry[conn]) {
	v, p := &ent.Value, c.p
	if v.probeAt != 0 && c.ns-v.probeAt < probeEvery {
		return
	}
	v.probeAt = c.ns
	f := packet.BuildTCP(c.out.injectBuf(), p, &packet.Segment{Flags: packet.ACK,
		Seq: p.Seq + 1<<31, Ack: p.Ack + 1<<31, Window: 0xffff})
	c.out.Inject = append(c.out.Inject, Injected{To: ToPU, Frame: f, PU: c.pu, AfterFrame: true})
	c.e.stats.injected.Add(1)
	c.e.stats.probes.Add(1)
}

func cmpEnd(a [16]byte, ap uint16, b [16]byte, bp uint16) int {
	if r := bytes.Compare(a[:], b[:]); r != 0 {
		return r
	}
	switch {
	case ap > bp:
		return 1
	case ap < bp:
		return -1
	}
	return 0
}

// establish marks the flow authorized and asks the daemon to let its
// packets bypass the dataplane.
func (c *slowPacket) establish(ent *flow.Entry[conn]) {
	ent.Value.authorized = true
	ent.Value.bypass = c.e.kernelBypass && ent.Key.Proto == ipproto.TCP
	ent.Value.authNoteAt = c.ns
	c.sh.SetState(ent, flow.Established, c.ns)
	n := note(Authorize, c.pu, &ent.Key)
	n.Handshake = ent.Key.Proto == ipproto.TCP
	c.out.Notes = append(c.out.Notes, n)
	if c.e.recordOpen {
		c.e.recordEstablished(c.pu, ent, c.ns)
	}
}

// established handles the slow-path packets of an established or closing
// flow: FINs (both seen: closing), anything unusual the fast path skipped.
func (c *slowPacket) established(ent *flow.Entry[conn]) {
	p := c.p
	c.touch(ent, len(c.frame))
	if p.Flags&packet.SYN != 0 {
		c.e.drop(c.out, reason.InvalidState)
		return
	}
	if !ent.Value.authorized {
		c.e.drop(c.out, reason.InvalidState)
		return
	}
	if c.dir == FromNet && ent.Value.target && !c.logged {
		// A handshake ACK sent again: the client's enforcer answers each
		// SYN-ACK the server's kernel re-sends with the token ACK, and
		// such a copy can arrive once the flow is established (through
		// here, or steered by the kernel's rule for the marker). Its
		// token frame is not data: the PU gets the plain ACK its peer's
		// TCP sent, never the frame's bytes in its stream.
		if off, ok := packet.FindOption(p, tokens.Option); ok {
			n, rc := c.tokenLen()
			if rc == reason.None {
				c.frame, rc = c.stripToken(off, n)
			}
			if rc != reason.None {
				c.e.drop(c.out, rc)
				return
			}
			c.e.stats.lateTokens.Add(1)
		}
	}
	if p.Flags&packet.FIN != 0 {
		c.sawFIN(ent, false)
		if ent.FIN[0] && ent.FIN[1] && ent.State != flow.Closing {
			c.sh.SetState(ent, flow.Closing, c.ns)
			// Take the flow out of the kernel now, not at the end of the
			// closing timer: a new connection may reuse the 4-tuple
			// (TIME_WAIT reuse) and its handshake must reach the
			// enforcers. The last ACKs come here and are forwarded.
			if !ent.Value.released {
				ent.Value.released = true
				n := note(Revoke, c.pu, &ent.Key)
				// The record comes at the end of the closing timer: the
				// kernel's counts are added to the flow before.
				n.Count, n.Since = c.e.kernelCounts, ent.Created
				c.out.Notes = append(c.out.Notes, n)
			}
		}
	}
	c.pass()
}

// revokedPacket answers a packet of a flow a policy change denied after it
// was established: the packet is dropped and both ends get a RST whose
// sequence number comes from it (the enforcer does not track sequence
// numbers of established flows; the kernel steers the flow back to the
// dataplane once it is revoked).
func (c *slowPacket) revokedPacket(ent *flow.Entry[conn]) {
	p := c.p
	c.touch(ent, len(c.frame))
	back := packet.BuildTCP(c.out.injectBuf(), p, &packet.Segment{Reverse: true, Flags: packet.RST, Seq: p.Ack})
	fwd := packet.BuildTCP(c.out.injectBuf(), p, &packet.Segment{Flags: packet.RST, Seq: p.Seq})
	c.e.stats.resets.Add(2)
	c.e.stats.injected.Add(2)
	if c.dir == FromApp {
		c.out.inject(c.pu, ToPU, back)
		c.out.inject(c.pu, ToNet, fwd)
		c.out.Verdict, c.out.Reason, c.out.Frame = Reset, ent.Value.reason, nil
		c.e.stats.count(ent.Value.reason)
		return
	}
	c.out.inject(c.pu, ToNet, back)
	c.out.inject(c.pu, ToPU, fwd)
	c.e.drop(c.out, ent.Value.reason)
}
