package dataplane

import (
	"time"

	"github.com/trireme-go/trireme/dataplane/packet"
	"github.com/trireme-go/trireme/flow"
	"github.com/trireme-go/trireme/ipproto"
	"github.com/trireme-go/trireme/reason"
)

// FINs. Both FINs seen take a flow out of the kernel and end it a few
// seconds later (closing), so a FIN must be believed only when the TCP that
// receives it would accept it. The PU's own FIN is its own business. A FIN
// from the network could be forged by anyone who knows the 4-tuple (a host
// on the underlay, a peer without an enforcer), and for a flow the kernel
// carries the enforcer has no current view of the window to judge it. So a
// FIN from the network is believed when a TCP that accepted it shows it:
//
//   - it acknowledges the PU's FIN exactly (the peer's kernel got it), or
//   - the PU's FIN, sent after it, acknowledges it exactly: once the peer
//     sent its FIN it sends no more data, so the PU's acknowledgment is the
//     FIN's sequence number plus one.
//
// A forged FIN is still forwarded (the PU's TCP ignores one outside its
// window), but it changes nothing here. The first FIN from the network and
// the latest three are kept as candidates: forged FINs before the real one,
// or a few after it, do not hide it. (A blind sender of more than three
// FINs on the exact 4-tuple between the peer's FIN and the PU's can keep
// the flow in the kernel until its established timeout: docs/security.md.)
type fins struct {
	local uint32 // sequence number of the PU's FIN (localSeen)
	// candidates[0] is the first FIN from the network, [1:] a ring of the
	// latest; seen counts them all.
	candidates [4]uint32
	seen       uint32
	localSeen  bool
}

// sawFIN records the FIN of the packet being decided. trusted: the packet
// is authenticated (the PU's own, or a token-verified handshake ACK).
func (c *slowPacket) sawFIN(ent *flow.Entry[conn], trusted bool) {
	p := c.p
	f := &ent.Value.fins
	seq := p.Seq + uint32(p.PayloadLen()) // the FIN's own sequence number
	acks := p.Flags&packet.ACK != 0
	if c.dir == FromApp {
		ent.FIN[sideLocal] = true
		f.local, f.localSeen = seq, true
		if acks && f.acknowledges(p.Ack) {
			ent.FIN[sideRemote] = true
		}
		return
	}
	switch {
	case trusted, acks && f.localSeen && p.Ack == f.local+1:
		ent.FIN[sideRemote] = true
	case f.seen == 0:
		f.candidates[0], f.seen = seq, 1
	default:
		f.candidates[1+(f.seen-1)%3] = seq
		f.seen++
	}
}

// acknowledges reports whether ack is exactly the end of a FIN candidate.
func (f *fins) acknowledges(ack uint32) bool {
	for i := range int(min(f.seen, 4)) {
		if ack == f.candidates[i]+1 {
			return true
		}
	}
	return false
}

// ProcessLogged judges a TCP FIN or RST that the kernel passed on a flow
// it carries and logged to the daemon (netsetup/steer's end rule, NFLOG):
// the same judgement as a steered one (sawFIN, rstFit and its probe), so
// the flow goes closing and is revoked at the second believed FIN, or ends
// at a RST that fits, exactly as if the packet had crossed the daemon. The
// packet is not forwarded (it is on its way) and not counted (the kernel's
// set entry counted it: the flow's final record gets that count). frame is
// the packet's headers as an Ethernet frame whose IP length is the
// original's (the payload is not read). Anything but a FIN or RST without
// SYN of a flow the enforcer holds as authorized changes nothing: a logged
// packet is as hostile as any other (the PU or the wire made it). Out may
// hold notes (the revocation) and frames to inject (a RST probe).
func (e *Enforcer) ProcessLogged(pu *PU, dir Direction, frame []byte, now time.Time, out *Output) {
	out.reset()
	out.Verdict = Drop
	p := &out.pkt
	code := p.Decode(frame)
	if pu == nil || code != reason.None || p.Proto != ipproto.TCP || p.Frag != packet.NotFragment ||
		p.Flags&(packet.FIN|packet.RST) == 0 || p.Flags&packet.SYN != 0 {
		e.stats.loggedIgnored.Add(1)
		return
	}
	view := pu.view.Load()
	if view == nil {
		e.stats.loggedIgnored.Add(1)
		return
	}
	c := slowPacket{e: e, pu: pu, view: view, dir: dir, p: p, ns: now.UnixNano(), now: now, out: out, logged: true}
	makeKey(&c.key, pu, dir, p)
	c.remote = p.Dst
	if dir == FromNet {
		c.remote = p.Src
	}
	c.sh = e.table.Shard(&c.key)
	c.sh.Lock()
	defer c.sh.Unlock()
	ent := c.sh.Get(&c.key)
	switch {
	case ent == nil:
		e.stats.loggedIgnored.Add(1)
		return
	case c.sh.Expired(ent, c.ns):
		e.finish(pu, ent, EndExpired, c.ns, out)
		c.sh.Delete(ent)
		e.stats.loggedIgnored.Add(1)
		return
	case ent.Value.revoked || !ent.Value.authorized || ent.State.Refused():
		e.stats.loggedIgnored.Add(1)
		return
	}
	e.stats.logged.Add(1)
	if p.Flags&packet.RST != 0 {
		c.rst(ent)
		return
	}
	if ent.Value.reset || (ent.State != flow.Established && ent.State != flow.Closing) {
		return
	}
	c.established(ent)
}
