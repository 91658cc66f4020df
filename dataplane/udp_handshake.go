// The datagram handshake: a UDP flow between a PU and a peer inside the
// target networks is decided by the peers' identities. The client's
// enforcer holds the PU's first datagrams and exchanges hello, reply (or
// reject) and confirm with the server's enforcer on the flow's own 5-tuple
// (tokens/datagram.go, docs/wire.md §8); the server's ingress rules decide
// on the client's verified identity, the client's egress rules on the
// server's; the held datagrams then go in order and the flow is authorized
// in the kernel. See docs/dataplane.md, "Datagrams".

package dataplane

import (
	"sync"
	"sync/atomic"
	"time"

	"github.com/trireme-go/trireme/dataplane/packet"
	"github.com/trireme-go/trireme/flow"
	"github.com/trireme-go/trireme/ipproto"
	"github.com/trireme-go/trireme/reason"
	"github.com/trireme-go/trireme/tokens"
)

// Bounds and timers of the datagram handshake.
const (
	// HoldPerFlow is how many datagrams a flow's client enforcer holds
	// while its handshake runs; later ones are dropped (hold-full).
	HoldPerFlow = 8
	// HoldPerPU bounds the bytes a PU's held datagrams take, all flows
	// together (hold-full beyond).
	HoldPerPU = 256 << 10
	// holdMaxFrame: larger frames (segmentation-offload super-packets) are
	// not held (hold-full): they could not be sent again as they are.
	holdMaxFrame = 9216 + 64
	// HelloRetry is the first retry interval of a hello without an
	// answer; it doubles at each retry.
	HelloRetry = 250 * time.Millisecond
	// HelloTries is how many hellos are sent (the first and the retries)
	// before the flow is denied missing-token: 0, 0.25, 0.75, 1.75 s,
	// given up at 3.75 s.
	HelloTries = 4
	// answerEvery bounds how often a server's enforcer sends its answer
	// again (repeated hellos, data before the confirm) per flow.
	answerEvery = int64(200 * time.Millisecond)
	holdBufSize = 2048
)

// dgState is a datagram flow's handshake state (inline in conn).
type dgState struct {
	// identity: the flow is decided by the datagram handshake (a UDP peer
	// inside the target networks), not by CIDR rules alone.
	identity bool
	tries    uint8
	// next: client, when the hello is sent again; server, the earliest a
	// repeated answer is sent.
	next int64
	held *heldFrames
}

// heldFrames are a client flow's hello and the datagrams held until its
// handshake completes.
type heldFrames struct {
	hello  *[]byte
	frames [HoldPerFlow]*[]byte
	n      int
	bytes  int // of frames, counted in the PU's budget
}

var (
	holdBufs  = sync.Pool{New: func() any { b := make([]byte, 0, holdBufSize); return &b }}
	heldPool  = sync.Pool{New: func() any { return new(heldFrames) }}
	holdTotal atomic.Int64 // bytes held on the node (tests)
)

func getBuf(n int) *[]byte {
	if n > holdBufSize {
		b := make([]byte, 0, n)
		return &b
	}
	return holdBufs.Get().(*[]byte)
}

func putBuf(b *[]byte) {
	if cap(*b) == holdBufSize {
		*b = (*b)[:0]
		holdBufs.Put(b)
	}
}

// pendingHellos are the keys of client flows whose hello awaits an answer,
// for Retry. Packets add keys (under their shard's lock, then this one);
// Retry takes a copy and looks each flow up afterwards, so the two locks
// are never taken the other way round.
type pendingHellos struct {
	mu      sync.Mutex
	keys    map[flow.Key]struct{}
	n       atomic.Int32
	retryMu sync.Mutex
	scratch []flow.Key
}

func (p *pendingHellos) add(k *flow.Key) {
	p.mu.Lock()
	if p.keys == nil {
		p.keys = make(map[flow.Key]struct{})
	}
	p.keys[*k] = struct{}{}
	p.n.Store(int32(len(p.keys)))
	p.mu.Unlock()
}

func (p *pendingHellos) remove(k *flow.Key) {
	p.mu.Lock()
	delete(p.keys, *k)
	p.n.Store(int32(len(p.keys)))
	p.mu.Unlock()
}

// identityDatagram reports whether a datagram is decided by the handshake:
// UDP to or from a unicast peer inside the target networks.
func (c *slowPacket) identityDatagram() bool {
	return c.p.Proto == ipproto.UDP && !c.remote.IsMulticast() && c.view.eng.IsTarget(c.remote)
}

// udp handles a UDP datagram whose peer is inside the target networks.
func (c *slowPacket) udp() {
	c.sh = c.e.table.Shard(&c.key)
	c.sh.Lock()
	defer c.sh.Unlock()
	ent := c.sh.Get(&c.key)
	if ent != nil && c.sh.Expired(ent, c.ns) {
		c.e.finish(c.pu, ent, EndExpired, c.ns, c.out)
		c.sh.Delete(ent)
		ent = nil
	}
	kind := tokens.NotHandshake
	if c.dir == FromNet {
		kind = tokens.KindOf(c.p.UDPPayload())
	}
	if ent == nil {
		switch {
		case c.dir == FromApp:
			c.udpClientNew()
		case kind == tokens.Hello:
			c.udpServerHello(nil)
		default:
			c.udpMissing()
		}
		return
	}
	v := &ent.Value
	if v.role != roleDatagram || !v.dg.identity {
		c.knownDatagram(ent) // decided by CIDR rules (restored)
		return
	}
	if ent.State.Refused() {
		c.touch(ent, len(c.frame))
		if kind == tokens.Hello && v.firstDir == FromNet && !v.revoked {
			c.udpServerHello(ent) // a hello after datagrams without one
			return
		}
		if c.dir == FromApp && v.firstDir == FromNet && v.reason == reason.MissingToken {
			// The PU starts a flow of its own on a 5-tuple where datagrams
			// without a handshake came from the network (possibly forged
			// to deny it this 5-tuple): a new flow, decided by a
			// handshake.
			c.e.finish(c.pu, ent, EndReplaced, c.ns, c.out)
			c.sh.Delete(ent)
			c.udpClientNew()
			return
		}
		if c.dir == v.firstDir && !v.revoked && c.ns >= v.dg.next {
			// The next datagram of a denied flow: its sender is told
			// again, as a kernel answers each datagram to a closed port
			// (at most every answerEvery): the PU, or a peer that sent
			// datagrams without a handshake.
			v.dg.next = c.ns + answerEvery
			if c.dir == FromApp {
				c.e.unreachable(c.pu, c.out, c.p)
			} else if v.reason == reason.MissingToken {
				c.e.unreachableToPeer(c.pu, c.out, c.p)
			}
		}
		c.e.drop(c.out, v.reason)
		return
	}
	if v.firstDir == FromApp {
		c.udpClient(ent, kind)
	} else {
		c.udpServer(ent, kind)
	}
}

// udpMissing denies a datagram from a peer inside the target networks that
// starts no handshake: the peer has no enforcer (like a SYN without a
// token). The denial is recorded once and remembered for the denied
// lifetime, so that the peer's next datagrams cost a lookup (a denied
// entry is the first evicted when room is needed); a hello within that
// time starts the flow over.
func (c *slowPacket) udpMissing() {
	ent, rc := c.insert()
	if ent == nil {
		c.e.drop(c.out, rc)
		return
	}
	v := &ent.Value
	v.role, v.firstDir, v.target, v.dg.identity = roleDatagram, FromNet, true, true
	v.reason, v.decidedAt = reason.MissingToken, c.ns
	c.touch(ent, len(c.frame))
	c.sh.SetState(ent, flow.Denied, c.ns)
	c.e.record(c.pu, ent, EndDenied, c.ns)
	v.dg.next = c.ns + answerEvery
	c.e.unreachableToPeer(c.pu, c.out, c.p)
	c.e.drop(c.out, reason.MissingToken)
}

// udpClientNew: the PU's first datagram toward a target peer. It is held,
// and a hello goes to the peer on the flow's 5-tuple.
func (c *slowPacket) udpClientNew() {
	ent, rc := c.insert()
	if ent == nil {
		c.e.drop(c.out, rc)
		return
	}
	v := &ent.Value
	v.role, v.firstDir, v.target, v.dg.identity = roleDatagram, FromApp, true, true
	c.touch(ent, len(c.frame))
	msg, err := c.e.tok.AppendHello(c.out.tok[:0], c.pu.local(), &v.tok, c.now)
	if err != nil {
		v.reason, v.decidedAt = code(err), c.ns
		c.sh.SetState(ent, flow.Denied, c.ns)
		c.e.record(c.pu, ent, EndDenied, c.ns)
		c.e.drop(c.out, v.reason)
		return
	}
	h := heldPool.Get().(*heldFrames)
	h.hello = getBuf(0)
	f := packet.BuildUDP((*h.hello)[:0], c.p, false, msg)
	*h.hello = f
	v.dg.held = h
	c.out.inject(c.pu, ToNet, append(c.out.injectBuf(), f...))
	c.e.stats.injected.Add(1)
	v.dg.tries, v.dg.next = 1, c.ns+int64(HelloRetry)
	c.sh.SetState(ent, flow.SynSent, c.ns)
	c.e.pending.add(&c.key)
	c.hold(ent)
}

// holdFragment handles a later fragment of a datagram whose first
// fragment a flow held: held too while the handshake runs, dropped with the
// flow's reason when it was denied. It reports false when the flow is
// established (the fragment goes on, after the released first fragment).
func (e *Enforcer) holdFragment(pu *PU, view *puView, dir Direction, p *packet.Packet, key *flow.Key, ns int64, now time.Time, out *Output) bool {
	c := slowPacket{e: e, pu: pu, view: view, dir: dir, p: p, frame: p.Frame, ns: ns, now: now, out: out, key: *key}
	c.sh = e.table.Shard(&c.key)
	c.sh.Lock()
	defer c.sh.Unlock()
	ent := c.sh.Get(&c.key)
	switch {
	case ent == nil:
		e.drop(out, reason.Fragment)
	case ent.State == flow.SynSent && ent.Value.dg.held != nil:
		c.hold(ent)
	case ent.State.Refused():
		e.drop(out, ent.Value.reason)
	default:
		return false
	}
	return true
}

// hold keeps the PU's datagram until the handshake completes, within the
// flow's and the PU's bounds (hold-full beyond).
func (c *slowPacket) hold(ent *flow.Entry[conn]) {
	h := ent.Value.dg.held
	n := len(c.frame)
	if h == nil || h.n == HoldPerFlow || n > holdMaxFrame {
		c.e.drop(c.out, reason.HoldFull)
		return
	}
	if c.pu.held.Add(int64(n)) > HoldPerPU {
		c.pu.held.Add(-int64(n))
		c.e.drop(c.out, reason.HoldFull)
		return
	}
	holdTotal.Add(int64(n))
	b := getBuf(n)
	*b = append((*b)[:0], c.frame...)
	h.frames[h.n] = b
	h.n++
	h.bytes += n
	if c.p.Frag == packet.FirstFragment {
		// Its later fragments are held with it (Enforcer.holdFragment).
		c.e.frags.hold(c.pu.index, c.dir, c.p, c.ns, &c.key)
	}
	// Not counted yet: a held datagram is counted forwarded when it is
	// released, dropped when its flow is denied or ends first.
	c.out.Verdict, c.out.Reason, c.out.Frame, c.out.Held = Drop, reason.None, nil, true
}

// release ends a flow's holding: the held datagrams go to out toward the
// network in order (release) or are dropped and counted with rc; the hello
// goes back to the pool.
func (e *Enforcer) release(pu *PU, v *conn, out *Output, send bool, rc reason.Code) {
	h := v.dg.held
	if h == nil {
		return
	}
	v.dg.held = nil
	for i := 0; i < h.n; i++ {
		b := h.frames[i]
		h.frames[i] = nil
		switch {
		case send && out != nil:
			out.Inject = append(out.Inject, Injected{To: ToNet, Frame: *b, PU: pu, Released: true})
			out.loans = append(out.loans, b)
			e.stats.forwarded.Add(1)
		case out != nil:
			out.Discarded = append(out.Discarded, Discard{PU: pu, Frame: *b, Reason: rc})
			out.loans = append(out.loans, b)
			e.stats.count(rc)
		default:
			putBuf(b)
			e.stats.count(rc)
		}
	}
	if pu != nil {
		pu.held.Add(-int64(h.bytes))
	}
	holdTotal.Add(-int64(h.bytes))
	putBuf(h.hello)
	*h = heldFrames{}
	heldPool.Put(h)
}

// unreachable tells the PU that its datagram p was refused: an ICMP
// unreachable (administratively prohibited) from the peer's address, as a
// firewall answers, so that its connected socket fails now rather than at
// its timeout (the RST of a refused TCP connection).
func (e *Enforcer) unreachable(pu *PU, out *Output, p *packet.Packet) {
	out.inject(pu, ToPU, packet.BuildUnreachable(out.injectBuf(), p))
	e.stats.injected.Add(1)
}

// unreachableToPeer answers a datagram from the network that starts no
// handshake with an ICMP unreachable toward its sender (as a firewall
// does): a host without an enforcer learns that it is refused, and the
// enforcer of a client whose flow this side has forgotten (this PU
// re-attached, its entry expired) forgets it too and starts over
// (icmpError).
func (e *Enforcer) unreachableToPeer(pu *PU, out *Output, p *packet.Packet) {
	out.inject(pu, ToNet, packet.BuildUnreachable(out.injectBuf(), p))
	e.stats.injected.Add(1)
}

// unreachableHeld answers the first datagram a denied flow held.
func (e *Enforcer) unreachableHeld(pu *PU, v *conn, out *Output, ns int64) {
	h := v.dg.held
	if h == nil || h.n == 0 || out == nil {
		return
	}
	var p packet.Packet
	if p.Decode(*h.frames[0]) != reason.None {
		return
	}
	v.dg.next = ns + answerEvery
	e.unreachable(pu, out, &p)
}

// udpClient handles a packet of a flow the PU started.
func (c *slowPacket) udpClient(ent *flow.Entry[conn], kind tokens.DatagramKind) {
	v := &ent.Value
	c.touch(ent, len(c.frame))
	if ent.State == flow.SynSent {
		switch {
		case c.dir == FromApp:
			c.hold(ent)
		case kind == tokens.Reply || kind == tokens.Reject:
			c.udpClientReply(ent)
		default:
			// The peer sends before it answered: not part of a flow it
			// authorized.
			c.e.drop(c.out, reason.HandshakePending)
		}
		return
	}
	if c.dir == FromNet && kind == tokens.Reply {
		// Our confirm was lost and the server answers our data with its
		// reply again: confirm again. What does not verify as the answer
		// to our hello is the application's data.
		tc := v.tok
		if _, rejected, err := c.e.tok.VerifyReply(c.p.UDPPayload(), &tc, c.now); err == nil && !rejected {
			c.injectConfirm(&v.tok)
			c.e.drop(c.out, reason.None)
			return
		}
	}
	c.udpForward(ent)
}

// udpClientReply verifies the server's answer: a reply whose server the
// PU's egress rules allow releases the held datagrams behind a confirm; a
// reject, or a server the egress rules deny, drops them.
func (c *slowPacket) udpClientReply(ent *flow.Entry[conn]) {
	v := &ent.Value
	peer, rejected, err := c.e.tok.VerifyReply(c.p.UDPPayload(), &v.tok, c.now)
	if err != nil {
		c.e.drop(c.out, code(err)) // a forged or stale answer changes nothing
		return
	}
	v.peer = peer
	c.e.pending.remove(&c.key)
	if rejected {
		c.udpDeny(ent, reason.IngressDenied, EndRejected)
		return
	}
	c.decide(ent, c.view.pol.Egress(peer.Identity, c.remote, ipproto.UDP, c.remotePort()))
	if !v.dec.Allowed() {
		c.udpDeny(ent, v.reason, EndDenied)
		return
	}
	c.injectConfirm(&v.tok)
	c.e.release(c.pu, v, c.out, true, reason.None)
	c.establish(ent)
	c.e.drop(c.out, reason.None)
}

// udpDeny denies a client flow: its held datagrams are dropped with rc and
// it is remembered (denied lifetime), so that the PU's next datagrams are
// dropped without a new handshake.
func (c *slowPacket) udpDeny(ent *flow.Entry[conn], rc reason.Code, end End) {
	v := &ent.Value
	v.reason = rc
	if !v.decided {
		v.decidedAt = c.ns
	}
	c.e.unreachableHeld(c.pu, v, c.out, c.ns)
	c.e.release(c.pu, v, c.out, false, rc)
	c.sh.SetState(ent, flow.Denied, c.ns)
	c.e.record(c.pu, ent, end, c.ns)
	c.e.drop(c.out, rc)
}

func (c *slowPacket) injectConfirm(tc *tokens.Conn) {
	msg, err := c.e.tok.AppendConfirm(c.out.tok[:0], tc)
	if err != nil {
		return
	}
	c.out.inject(c.pu, ToNet, packet.BuildUDP(c.out.injectBuf(), c.p, true, msg))
	c.e.stats.injected.Add(1)
}

// udpServer handles a packet of a flow the peer started.
func (c *slowPacket) udpServer(ent *flow.Entry[conn], kind tokens.DatagramKind) {
	v := &ent.Value
	if ent.State == flow.SynAckSent {
		c.touch(ent, len(c.frame))
		switch kind {
		case tokens.Hello:
			c.udpServerHello(ent)
			return
		case tokens.Confirm:
			if err := c.e.tok.VerifyConfirm(c.p.UDPPayload(), &v.tok); err != nil {
				c.e.drop(c.out, code(err))
				return
			}
			c.establish(ent)
			c.e.drop(c.out, reason.None)
			return
		}
		if c.dir == FromNet {
			// Data before the confirm: the confirm was lost (or the peer
			// skips it). The answer goes again (at once the first time:
			// the data came right behind the lost confirm), so that the
			// client's enforcer confirms again.
			if v.dg.tries == 0 {
				v.dg.tries, v.dg.next = 1, c.ns
			}
			c.answerAgain(ent)
		}
		c.e.drop(c.out, reason.HandshakePending)
		return
	}
	if c.dir == FromNet {
		switch kind {
		case tokens.Hello:
			tc := v.tok
			if _, err := c.e.tok.VerifyHelloFrom(c.p.UDPPayload(), &tc, c.now, c.remote); err == nil {
				c.touch(ent, len(c.frame))
				if tc.Answered() {
					c.e.drop(c.out, reason.None) // a late copy of the flow's hello
					return
				}
				// The client's enforcer started the flow over (it forgot
				// it): so do we.
				c.e.finish(c.pu, ent, EndReplaced, c.ns, c.out)
				c.sh.Delete(ent)
				c.udpServerHello(nil)
				return
			}
		case tokens.Confirm:
			tc := v.tok
			if c.e.tok.VerifyConfirm(c.p.UDPPayload(), &tc) == nil {
				c.touch(ent, len(c.frame))
				c.e.drop(c.out, reason.None) // a late copy of the confirm
				return
			}
		}
	}
	c.udpForward(ent)
}

// udpServerHello verifies a hello and answers it: the PU's ingress rules
// decide on the client's identity. ent is nil for a new flow; a hello that
// does not verify leaves no state. A repeated hello gets the same answer,
// at most every answerEvery.
func (c *slowPacket) udpServerHello(ent *flow.Entry[conn]) {
	payload := c.p.UDPPayload()
	if ent != nil {
		v := &ent.Value
		tc := v.tok
		peer, err := c.e.tok.VerifyHelloFrom(payload, &tc, c.now, c.remote)
		if err != nil {
			c.e.drop(c.out, code(err))
			return
		}
		if tc.Answered() {
			c.answerAgain(ent)
			if ent.State.Refused() {
				c.e.drop(c.out, v.reason)
			} else {
				c.e.drop(c.out, reason.None)
			}
			return
		}
		// Another nonce: the client's enforcer started over.
		c.e.finish(c.pu, ent, EndReplaced, c.ns, c.out)
		c.sh.Delete(ent)
		_ = peer
	}
	var tc tokens.Conn
	peer, err := c.e.tok.VerifyHelloFrom(payload, &tc, c.now, c.remote)
	if err != nil {
		c.e.drop(c.out, code(err))
		return
	}
	ent, rc := c.insert()
	if ent == nil {
		c.e.drop(c.out, rc)
		return
	}
	v := &ent.Value
	v.role, v.firstDir, v.target, v.dg.identity = roleDatagram, FromNet, true, true
	v.tok, v.peer = tc, peer
	c.touch(ent, len(c.frame))
	c.decide(ent, c.view.pol.Ingress(peer.Identity, c.remote, ipproto.UDP, c.localPort()))
	allowed := v.dec.Allowed()
	if !c.answer(ent, !allowed) {
		return
	}
	v.dg.next = c.ns + answerEvery
	if !allowed {
		// The client's enforcer remembers the reject; this side keeps
		// nothing (a repeated hello, the reject lost, is decided again
		// from the caches), so a denial costs one entry, the client's.
		rc := v.reason
		c.e.record(c.pu, ent, EndDenied, c.ns)
		c.sh.Delete(ent) // zeroes *v
		c.e.drop(c.out, rc)
		return
	}
	c.sh.SetState(ent, flow.SynAckSent, c.ns)
	c.e.drop(c.out, reason.None)
}

// answer sends the flow's reply (or reject) toward the client. On failure
// (the PU's token could not be made) the flow is forgotten and the packet
// dropped with the reason.
func (c *slowPacket) answer(ent *flow.Entry[conn], reject bool) bool {
	v := &ent.Value
	msg, err := c.e.tok.AppendReply(c.out.tok[:0], c.pu.local(), &v.tok, c.now, reject)
	if err != nil {
		v.reason, v.decidedAt = code(err), c.ns
		c.e.record(c.pu, ent, EndDenied, c.ns)
		c.sh.Delete(ent)
		c.e.drop(c.out, code(err))
		return false
	}
	c.out.inject(c.pu, ToNet, packet.BuildUDP(c.out.injectBuf(), c.p, c.dir == FromNet, msg))
	c.e.stats.injected.Add(1)
	return true
}

// answerAgain re-sends the flow's answer, at most every answerEvery.
func (c *slowPacket) answerAgain(ent *flow.Entry[conn]) {
	v := &ent.Value
	if c.ns < v.dg.next {
		return
	}
	v.dg.next = c.ns + answerEvery
	c.answer(ent, v.tok.Rejected())
}

// udpForward forwards a datagram of an established identity flow that the
// fast path did not take (an application datagram that starts with the
// marker, a first fragment).
func (c *slowPacket) udpForward(ent *flow.Entry[conn]) {
	c.touch(ent, len(c.frame))
	if !ent.Value.authorized {
		c.e.drop(c.out, reason.InvalidState)
		return
	}
	c.e.forward(c.out, c.frame)
}

// Retry sends the hellos whose answer is late again, with exponential
// backoff, and denies (missing-token) the flows whose peer never answered
// (HelloTries hellos): their held datagrams are dropped. The frames to
// send are appended to out.Inject. The daemon calls it every 100 ms;
// Expire calls it too.
func (e *Enforcer) Retry(now time.Time, out *Output) {
	out.reset()
	e.retry(now.UnixNano(), out)
}

func (e *Enforcer) retry(ns int64, out *Output) {
	p := &e.pending
	if p.n.Load() == 0 {
		return
	}
	p.retryMu.Lock()
	defer p.retryMu.Unlock()
	p.mu.Lock()
	keys := p.scratch[:0]
	for k := range p.keys {
		keys = append(keys, k)
	}
	p.scratch = keys
	p.mu.Unlock()
	for i := range keys {
		k := &keys[i]
		sh := e.table.Shard(k)
		sh.Lock()
		ent := sh.Get(k)
		if ent == nil || ent.State != flow.SynSent || ent.Value.role != roleDatagram || !ent.Value.dg.identity || ent.Value.dg.held == nil {
			sh.Unlock()
			p.remove(k)
			continue
		}
		v := &ent.Value
		if ns < v.dg.next {
			sh.Unlock()
			continue
		}
		pu := e.puByIndex(k.PU)
		if v.dg.tries >= HelloTries || pu == nil {
			// No enforcer answered: like a SYN-ACK without a token.
			v.reason, v.decidedAt = reason.MissingToken, ns
			if pu != nil {
				e.unreachableHeld(pu, v, out, ns)
			}
			e.release(pu, v, out, false, reason.MissingToken)
			sh.SetState(ent, flow.Denied, ns)
			e.record(pu, ent, EndDenied, ns)
			sh.Unlock()
			p.remove(k)
			continue
		}
		out.Inject = append(out.Inject, Injected{To: ToNet, Frame: append(out.injectBuf(), *v.dg.held.hello...), PU: pu})
		e.stats.injected.Add(1)
		v.dg.next = ns + int64(HelloRetry)<<v.dg.tries
		v.dg.tries++
		sh.Unlock()
	}
}
