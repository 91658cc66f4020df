package dataplane

import (
	"bytes"
	"net/netip"
	"time"

	"github.com/trireme-go/trireme/dataplane/packet"
	"github.com/trireme-go/trireme/flow"
	"github.com/trireme-go/trireme/identity"
	"github.com/trireme-go/trireme/ipproto"
	"github.com/trireme-go/trireme/policy"
	"github.com/trireme-go/trireme/reason"
	"github.com/trireme-go/trireme/tokens"
)

// role is the local PU's part in a flow.
type role uint8

const (
	roleNone   role = iota
	roleClient      // the PU sent the SYN
	roleServer      // the PU received the SYN
	roleDatagram
)

// conn is the enforcer's per-flow state, stored inline in the flow table.
type conn struct {
	tok        tokens.Conn
	peer       *tokens.Peer
	dec        policy.Decision
	decided    bool
	authorized bool
	target     bool // the peer is inside the target networks (tokens)
	pickedUp   bool // mid-stream pickup (MidStreamAllowACL)
	role       role
	reason     reason.Code // why the flow was denied
	clientISN  uint32
	serverISN  uint32
	synLen     uint32 // sequence space of the SYN (1 + TFO data)
	ackWindow  uint16 // window of the client's handshake ACK (token-ACK re-injection)
	decidedAt  int64
	// authNoteAt is when the last Authorize note was emitted (ns).
	authNoteAt int64
	// released: the kernel no longer holds the flow (revoked when it
	// started closing), though the enforcer still forwards its last packets.
	released bool
	recorded bool // the flow record was written (at the denial or the RST)
	revoked  bool // denied by a policy change after it was established
	restored bool // re-created from the kernel's authorized set (restart)
	firstDir Direction
	reset    bool // a RST ended the flow; it lingers for the closing timeout
	// seq is what the enforcer saw of the flow's sequence numbers (RST
	// acceptance). bypass: the flow's packets may pass in the kernel
	// without the enforcer (Config.KernelBypass, once authorized), so seq
	// is out of date: the PU's own TCP judges RSTs from the network, and a
	// probe tells the enforcer what it decided (probeAt: the last probe).
	seq     seqs
	bypass  bool
	probeAt int64
	// A new connection's SYN for this 4-tuple, passed to the PU while the
	// established connection lives (its TCP answers a live connection
	// with a challenge ACK; a SYN-ACK means the old one is gone): its ISN,
	// the end of its sequence space and its window scale offer.
	succ      bool
	succISN   uint32
	succEnd   uint32
	succScale uint8
}

// ctx carries one slow-path packet through the handlers.
type ctx struct {
	e      *Enforcer
	pu     *PU
	view   *puView
	dir    Direction
	p      *packet.Packet
	frame  []byte
	ns     int64
	now    time.Time
	out    *Output
	key    flow.Key
	remote netip.Addr
	sh     *flow.Shard[conn]
}

func (c *ctx) localPort() uint16 {
	if c.dir == FromApp {
		return c.p.SrcPort
	}
	return c.p.DstPort
}

func (c *ctx) remotePort() uint16 {
	if c.dir == FromApp {
		return c.p.DstPort
	}
	return c.p.SrcPort
}

// insert adds a flow. When the PU holds its whole share of the table (or
// the table is full) a denied, ended or half-open flow is evicted (its
// record written, its kernel entry revoked); when none can be, the new flow
// is refused: rc says why (flow-quota, table-full), counted for the PU.
func (c *ctx) insert() (ent *flow.Entry[conn], rc reason.Code) {
	ent, rc = c.sh.Insert(&c.key, c.ns, c.evicted)
	if ent == nil {
		c.pu.refused.Add(1)
	}
	return ent, rc
}

// evicted ends a flow the table evicts to make room (possibly another
// PU's, whose shard the table holds locked).
func (c *ctx) evicted(v *flow.Entry[conn]) {
	c.e.finish(c.e.puByIndex(v.Key.PU), v, EndEvicted, c.ns, c.out)
}

func (c *ctx) touch(ent *flow.Entry[conn], n int) {
	c.sh.Touch(ent, flow.Dir(c.dir), n, c.ns)
}

func (c *ctx) tcp() {
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
func (c *ctx) observe(ent *flow.Entry[conn]) {
	if v, p := &ent.Value, c.p; !v.bypass {
		v.seq.observe(c.side(), p.Flags, p.Seq, p.Ack, p.Window, p.PayloadLen())
	}
}

// newConnection handles a SYN without state: an app SYN makes the PU a
// client, a net SYN a server.
func (c *ctx) newConnection() {
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

// clientSYN adds the SYN token toward a target peer; toward an external one
// the PU's egress CIDR rules decide now.
func (c *ctx) clientSYN(ent *flow.Entry[conn]) {
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
	tok, err := c.e.tok.AppendSYN(c.out.tok[:0], c.pu.local, &v.tok, c.now)
	if err != nil {
		c.denyCode(ent, code(err))
		return
	}
	f, rc := packet.InsertToken(c.out.main[:0], c.p, tokens.Option, tok, c.e.mtu)
	if rc != reason.None {
		c.denyCode(ent, rc)
		return
	}
	c.sh.SetState(ent, flow.SynSent, c.ns)
	c.e.forward(c.out, f)
}

// serverSYN verifies the client's token and applies the PU's ingress rules.
func (c *ctx) serverSYN(ent *flow.Entry[conn]) {
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
	f, rc := packet.StripToken(c.p, off, tokLen)
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

// dataLen is the TCP payload length without our token frame (the
// sequence space the peer's kernel used).
func (c *ctx) dataLen() int {
	n := c.p.PayloadLen()
	if _, ok := packet.FindOption(c.p, tokens.Option); ok {
		if t, err := tokens.FrameLen(c.p.Frame[c.p.Payload:c.p.End]); err == nil {
			n -= t
		}
	}
	return n
}

// synReceived enters syn-received for a new SYN; a retransmitted SYN
// leaves a flow that got further (syn-ack-sent) where it is.
func (c *ctx) synReceived(ent *flow.Entry[conn]) {
	if ent.State == flow.StateNew {
		c.sh.SetState(ent, flow.SynReceived, c.ns)
	}
}

// findToken locates the marker option and the token frame of c.p.
func (c *ctx) findToken() (off, n int, rc reason.Code) {
	off, ok := packet.FindOption(c.p, tokens.Option)
	if !ok {
		return 0, 0, reason.MissingToken
	}
	n, err := tokens.FrameLen(c.p.Frame[c.p.Payload:c.p.End])
	if err != nil {
		return 0, 0, code(err)
	}
	return off, n, reason.None
}

func code(err error) reason.Code {
	if rc, ok := err.(reason.Code); ok {
		return rc
	}
	return reason.MalformedToken
}

// decide records the policy decision of a flow.
func (c *ctx) decide(ent *flow.Entry[conn], d policy.Decision) {
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
func (c *ctx) denyCode(ent *flow.Entry[conn], rc reason.Code) {
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
func (c *ctx) deny(ent *flow.Entry[conn], rc reason.Code) {
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
func (c *ctx) overBudget(ent *flow.Entry[conn]) {
	ent.Value.reason, ent.Value.decidedAt = reason.VerifyRateLimited, c.ns
	c.e.record(c.pu, ent, EndDenied, c.ns)
	c.sh.Delete(ent)
	c.e.drop(c.out, reason.VerifyRateLimited)
}

// refuse drops the SYN and answers it with a RST to the client.
func (c *ctx) refuse(rc reason.Code, ent *flow.Entry[conn]) {
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

// client handles a packet of a flow the PU opened.
func (c *ctx) client(ent *flow.Entry[conn]) {
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
func (c *ctx) clientSYNACK(ent *flow.Entry[conn]) {
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

func (c *ctx) deliverSYNACK(ent *flow.Entry[conn], first bool) {
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
	f, rc := packet.StripToken(c.p, off, n)
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
func (c *ctx) clientRefuse(ent *flow.Entry[conn], rc reason.Code) {
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
func (c *ctx) clientACK(ent *flow.Entry[conn]) {
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
			f, rc = packet.InsertToken(c.out.main[:0], p, tokens.Option, tok, c.e.mtu)
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
		ent.FIN[c.dir&1] = true
	}
	c.establish(ent)
	c.e.forward(c.out, f)
}

// injectTokenACK crafts a pure ACK carrying the ACK token. fromSYNACK: the
// template is the server's retransmitted SYN-ACK (reverse it); otherwise the
// PU's own ACK.
func (c *ctx) injectTokenACK(ent *flow.Entry[conn], fromSYNACK bool) {
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
func (c *ctx) peerSYN(ent *flow.Entry[conn]) {
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
func (c *ctx) authSYN(target bool, tok *tokens.Conn) (peer *tokens.Peer, d policy.Decision, rc reason.Code) {
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
func (c *ctx) recordRefused(ent *flow.Entry[conn], rc reason.Code, peer *tokens.Peer, d policy.Decision) {
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
func (c *ctx) successorSYN(ent *flow.Entry[conn], tok *tokens.Conn) {
	v, p := &ent.Value, c.p
	c.touch(ent, len(c.frame))
	f := c.frame
	synLen := 1 + uint32(c.dataLen())
	if v.target {
		off, n, _ := c.findToken() // authSYN found it
		var rc reason.Code
		if f, rc = packet.StripToken(p, off, n); rc != reason.None {
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
func (c *ctx) promoteSuccessor(old *flow.Entry[conn]) *flow.Entry[conn] {
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

// rst handles a RST on a known flow: it ends the flow only when the
// receiving TCP would accept it (see seq.go); one inside the receiver's
// window goes on without changing the flow (the receiver challenges it),
// one outside is dropped. A reset flow lingers, unauthorized, for the
// reset lifetime, so that repeated RSTs still pass (a handshake does not).
func (c *ctx) rst(ent *flow.Entry[conn]) {
	v := &ent.Value
	c.touch(ent, len(c.frame))
	if ent.State.Refused() {
		c.e.drop(c.out, v.reason)
		return
	}
	if v.reset {
		c.e.forward(c.out, c.frame)
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
		c.e.forward(c.out, c.frame)
	case rstOutOfWindow:
		c.e.drop(c.out, reason.OutOfWindow)
	default:
		c.e.forward(c.out, c.frame)
	}
}

// rstFit judges a RST against the flow's sequence window. On a flow whose
// packets bypass the enforcer the window it saw is out of date: a RST from
// the PU is its own TCP's (its connection is gone); one from the network
// goes to the PU, whose TCP applies RFC 5961 itself, and a probe follows
// it to learn the outcome.
func (c *ctx) rstFit(ent *flow.Entry[conn]) rstFit {
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
func (c *ctx) probe(ent *flow.Entry[conn]) {
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

func (c *ctx) side() int { return int(c.dir & 1) }

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

// server handles a packet of a flow the PU accepted.
func (c *ctx) server(ent *flow.Entry[conn]) {
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
		tok, err := c.e.tok.AppendSYNACK(c.out.tok[:0], c.pu.local, &v.tok, c.now)
		if err != nil {
			c.e.drop(c.out, code(err))
			return
		}
		f, rc := packet.InsertToken(c.out.main[:0], p, tokens.Option, tok, c.e.mtu)
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
func (c *ctx) serverACK(ent *flow.Entry[conn]) {
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
	f, rc := packet.StripToken(c.p, off, n)
	if rc != reason.None {
		c.e.drop(c.out, rc)
		return
	}
	if fin {
		ent.FIN[c.dir&1] = true
	}
	c.establish(ent)
	c.e.forward(c.out, f)
}

// establish marks the flow authorized and asks the daemon to let its
// packets bypass the dataplane.
func (c *ctx) establish(ent *flow.Entry[conn]) {
	ent.Value.authorized = true
	ent.Value.bypass = c.e.kernelBypass && ent.Key.Proto == ipproto.TCP
	ent.Value.authNoteAt = c.ns
	c.sh.SetState(ent, flow.Established, c.ns)
	c.out.Notes = append(c.out.Notes, note(Authorize, c.pu, &ent.Key))
	if c.e.recordOpen {
		c.e.recordEstablished(c.pu, ent, c.ns)
	}
}

func note(kind NoteKind, pu *PU, k *flow.Key) Note {
	return Note{Kind: kind, PU: pu, Proto: k.Proto,
		Local:  netip.AddrPortFrom(k.LocalAddr(), k.LocalPort),
		Remote: netip.AddrPortFrom(k.RemoteAddr(), k.RemotePort), VLAN: k.VLAN}
}

// established handles the slow-path packets of an established or closing
// flow: FINs (both seen: closing), anything unusual the fast path skipped.
func (c *ctx) established(ent *flow.Entry[conn]) {
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
	if p.Flags&packet.FIN != 0 {
		ent.FIN[c.dir&1] = true
		if ent.FIN[0] && ent.FIN[1] && ent.State != flow.Closing {
			c.sh.SetState(ent, flow.Closing, c.ns)
			// Take the flow out of the kernel now, not at the end of the
			// closing timer: a new connection may reuse the 4-tuple
			// (TIME_WAIT reuse) and its handshake must reach the
			// enforcers. The last ACKs come here and are forwarded.
			if !ent.Value.released {
				ent.Value.released = true
				c.out.Notes = append(c.out.Notes, note(Revoke, c.pu, &ent.Key))
			}
		}
	}
	c.e.forward(c.out, c.frame)
}

// midStream applies the configured rule to a TCP packet without state.
func (c *ctx) midStream() {
	p := c.p
	rst := p.Flags&packet.RST != 0
	switch c.e.midStream {
	case MidStreamReset:
		if rst {
			break
		}
		seg := packet.Segment{Reverse: true, Flags: packet.RST, Seq: p.Ack}
		if p.Flags&packet.ACK == 0 {
			seg = packet.Segment{Reverse: true, Flags: packet.RST | packet.ACK,
				Ack: p.Seq + uint32(p.PayloadLen())}
		}
		f := packet.BuildTCP(c.out.injectBuf(), p, &seg)
		c.e.stats.resets.Add(1)
		c.e.stats.injected.Add(1)
		if c.dir == FromApp {
			c.out.inject(c.pu, ToPU, f)
			c.out.Verdict, c.out.Reason = Reset, reason.UnknownFlow
			c.e.stats.count(reason.UnknownFlow)
			return
		}
		c.out.inject(c.pu, ToNet, f)
	case MidStreamAllowACL:
		if rst {
			break
		}
		d := c.view.pol.Egress(nil, c.remote, ipproto.TCP, c.remotePort())
		if !d.Allowed() {
			d = c.view.pol.Ingress(nil, c.remote, ipproto.TCP, c.localPort())
		}
		if !d.Allowed() {
			break
		}
		ent, rc := c.insert()
		if ent == nil {
			c.e.drop(c.out, rc)
			return
		}
		ent.Value.role, ent.Value.pickedUp = roleClient, true
		ent.Value.target = c.view.eng.IsTarget(c.remote)
		c.decide(ent, d)
		c.establish(ent)
		c.touch(ent, len(c.frame))
		f := c.frame
		if off, n, rc := c.findToken(); rc == reason.None {
			// A peer's enforcer still had state (e.g. our restart in the
			// middle of its handshake): its token must not reach the PU.
			if g, rc := packet.StripToken(c.p, off, n); rc == reason.None {
				f = g
			}
		}
		c.observe(ent)
		c.e.forward(c.out, f)
		return
	}
	c.e.drop(c.out, reason.UnknownFlow)
}

// datagram handles UDP, ICMP and other non-TCP protocols: the PU's CIDR
// rules decide on a flow's first packet (peer identity is not carried),
// later packets and replies of an allowed flow pass.
func (c *ctx) datagram() {
	if c.p.IsICMPError() && c.icmpError() {
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
		c.touch(ent, len(c.frame))
		if ent.State.Refused() {
			c.e.drop(c.out, ent.Value.reason)
			return
		}
		c.e.forward(c.out, c.frame)
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
	proto := c.p.Proto
	var port uint16
	var d policy.Decision
	if c.dir == FromApp {
		if c.p.Proto.HasPorts() {
			port = c.remotePort()
		}
		d = c.view.pol.Egress(nil, c.remote, proto, port)
	} else {
		if c.p.Proto == ipproto.UDP {
			port = c.localPort()
		}
		d = c.view.pol.Ingress(nil, c.remote, proto, port)
	}
	c.decide(ent, d)
	c.touch(ent, len(c.frame))
	if !d.Allowed() {
		c.sh.SetState(ent, flow.Denied, c.ns)
		c.e.record(c.pu, ent, EndDenied, c.ns)
		c.e.drop(c.out, ent.Value.reason)
		return
	}
	c.establish(ent)
	c.e.forward(c.out, c.frame)
}

// revokedPacket answers a packet of a flow a policy change denied after it
// was established: the packet is dropped and both ends get a RST whose
// sequence number comes from it (the enforcer does not track sequence
// numbers of established flows; the kernel steers the flow back to the
// dataplane once it is revoked).
func (c *ctx) revokedPacket(ent *flow.Entry[conn]) {
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
func (c *ctx) icmpError() bool {
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
	c.e.forward(c.out, c.frame)
	return true
}
