package dataplane

import "github.com/trireme-go/trireme/dataplane/packet"

// Sequence windows. The enforcer decides whether a RST may end a flow as
// the receiving TCP would (RFC 5961 §3): only a RST whose sequence number is
// exactly the next one the receiver expects ends it; one elsewhere in the
// receiver's window is passed on (the receiver answers it with a challenge
// ACK) without touching the flow; one outside the window is dropped. In
// SYN-SENT a RST counts only when it acknowledges the SYN. For that it keeps,
// per flow and per side, what the packets it saw say about the side's
// sequence space: cheap arithmetic on fields the decoder already read, no
// allocation.

// side indexes per-side state: the local PU's side (flow.FromPU, 0) or the
// peer's (flow.FromNet, 1). A packet's sender side is its Direction.
const (
	sideLocal  = 0
	sideRemote = 1
)

// seqs is what the enforcer knows of a TCP flow's sequence numbers.
type seqs struct {
	// nxt is the sequence number after the last byte (SYN and FIN count
	// one) each side sent: its SND.NXT as far as the enforcer saw.
	nxt [2]uint32
	// rcv is the highest acknowledgment each side sent (or, before it sent
	// one, what it will expect once it got the peer's SYN): a lower bound of
	// its RCV.NXT. edge is the right edge of its receive window, rcv plus
	// the advertised window (scaled), the highest seen.
	rcv, edge [2]uint32
	// offered is each side's window scale shift from its SYN (noScale:
	// none); scale is the shift in force (RFC 7323: both sides offered).
	offered [2]uint8
	scale   [2]uint8
	sent    [2]bool // nxt is known (the side's SYN or a segment of it was seen)
	acked   [2]bool // rcv and edge are known
}

const noScale = 0xff

func seqLT(a, b uint32) bool { return int32(a-b) < 0 }
func seqLE(a, b uint32) bool { return int32(a-b) <= 0 }

// syn records a SYN or SYN-ACK sent by side s: its initial sequence number,
// the sequence space of the SYN (1 + data), its window scale offer, and
// what the other side will expect from now on.
func (q *seqs) syn(s int, p *packet.Packet, synLen uint32) {
	r := 1 - s
	q.nxt[s], q.sent[s] = p.Seq+synLen, true
	q.offered[s] = noScale
	if sh, ok := packet.WindowScale(p); ok {
		q.offered[s] = sh
	}
	if p.Flags&packet.ACK != 0 {
		// SYN-ACK: both offers are known now.
		if q.offered[0] != noScale && q.offered[1] != noScale {
			q.scale = q.offered
		}
		q.rcv[s], q.edge[s], q.acked[s] = p.Ack, p.Ack+uint32(p.Window), true // a SYN's window is never scaled
	}
	// The receiver of a SYN expects the byte after it.
	q.rcv[r], q.edge[r], q.acked[r] = p.Seq+1, p.Seq+1, true
}

// observe updates the view with a segment (not a SYN, not a RST) sent by
// side s that the enforcer forwards, carrying n bytes of data. A segment
// moves the view only where it is plausible: its data starts within what
// the receiver's window allows, its acknowledgment covers only what the
// other side sent. A forged segment far outside the window therefore cannot
// move the window to where a forged RST would then fit.
func (q *seqs) observe(s int, flags uint8, seq, ack uint32, win uint16, n int) {
	r := 1 - s
	end := seq + uint32(n)
	if flags&packet.FIN != 0 {
		end++
	}
	switch {
	case !q.sent[s]:
		q.nxt[s], q.sent[s] = end, true
	case seqLT(q.nxt[s], end) && (!q.acked[r] || seqLE(seq, q.edge[r])):
		q.nxt[s] = end
	}
	if flags&packet.ACK == 0 || q.sent[r] && !seqLE(ack, q.nxt[r]) {
		return
	}
	e := ack + uint32(win)<<q.scale[s]
	if !q.acked[s] {
		q.rcv[s], q.edge[s], q.acked[s] = ack, e, true
		return
	}
	if seqLT(q.rcv[s], ack) {
		q.rcv[s] = ack
	}
	if seqLT(q.edge[s], e) {
		q.edge[s] = e
	}
}

// rstFit is how a RST fits the receiver's window.
type rstFit uint8

const (
	// rstExact: the sequence number the receiver expects next (or, in
	// SYN-SENT, an acknowledgment of the SYN): the receiver resets.
	rstExact rstFit = iota
	// rstInWindow: inside the receiver's window but not exact: it answers
	// with a challenge ACK (RFC 5961 §3.2) and stays.
	rstInWindow
	// rstOutOfWindow: outside the window: the receiver ignores it.
	rstOutOfWindow
	// rstUnknown: the enforcer has not seen enough of the flow to judge.
	rstUnknown
)

// rst classifies a RST sent by side s with sequence number seq (and
// acknowledgment ack when hasACK). clientSide is the side that sent the
// first SYN, isn its initial sequence number.
func (q *seqs) rst(s int, seq, ack uint32, hasACK bool, clientSide int, isn uint32) rstFit {
	r := 1 - s
	if r == clientSide && !q.sent[s] {
		// The receiver is in SYN-SENT (nothing of the sender seen yet): a
		// RST is acceptable only if it acknowledges the SYN (RFC 793,
		// RFC 5961 §3.2).
		if hasACK && seqLT(isn, ack) && seqLE(ack, q.nxt[r]) {
			return rstExact
		}
		return rstOutOfWindow
	}
	if !q.acked[r] {
		if q.sent[s] && seq == q.nxt[s] {
			return rstExact
		}
		return rstUnknown
	}
	// The receiver's RCV.NXT lies between what it acknowledged and what the
	// sender sent: a RST at either end is the one a real TCP sends (an
	// abort at SND.NXT, or a reset answering a segment, at its ACK).
	if seq == q.rcv[r] || q.sent[s] && seq == q.nxt[s] {
		return rstExact
	}
	hi := q.edge[r]
	if q.sent[s] && seqLT(hi, q.nxt[s]+1) {
		hi = q.nxt[s] + 1
	}
	if seqLE(q.rcv[r], seq) && seqLT(seq, hi) {
		return rstInWindow
	}
	return rstOutOfWindow
}
