package node

import (
	"sync"

	"github.com/trireme-go/trireme/dataplane"
)

// DefaultFlowRing is how many flow records the daemon keeps in memory for
// `trireme flows` and the web page when the config does not say
// (observe.flowRing): ~8 MiB at ~512 bytes a record.
const DefaultFlowRing = 16384

// Flow is one flow record as `trireme flows` serves it: the record the
// enforcer wrote (the same as the flow log's line), its place in the ring,
// and what the daemon adds for the reader: the PUs' names and the verdict
// in one word.
type Flow struct {
	// Seq numbers the records the daemon kept since it started (1, 2,
	// ...): a follower resumes after the last one it saw.
	Seq uint64 `json:"seq"`
	dataplane.Record
	// LocalName is the local PU's name; RemoteName the peer's when it is
	// a PU of this node (both filled at query time from the PUs the
	// daemon enforces then; empty once a PU is gone).
	LocalName  string `json:"localName,omitempty"`
	RemoteName string `json:"remoteName,omitempty"`
	// Verdict is allowed, denied, rejected or none (a handshake that never
	// completed, nothing passed); Observed says an observed rule matched.
	Verdict string `json:"verdict"`
	// Record.KernelCounted says the packet and byte counters include what
	// the kernel counted of the flow: so far (an open, authorized flow,
	// read at query time) or to its end (a final record).
}

// Verdicts a flow can have (Flow.Verdict; the `verdict` filter also takes
// "observed": flows an observed rule matched).
const (
	VerdictAllowed  = "allowed"
	VerdictDenied   = "denied"
	VerdictRejected = "rejected"
	VerdictNone     = "none"
	VerdictObserved = "observed"
)

// verdictOf maps a record's action to a verdict.
func verdictOf(r *dataplane.Record) string {
	switch r.Action {
	case "allow":
		return VerdictAllowed
	case "deny":
		return VerdictDenied
	case "reject":
		return VerdictRejected
	}
	return VerdictNone
}

// flowRing keeps the newest records the enforcer wrote, fed by the same
// calls as the flow log (before the log's aggregation of refusals: every
// refusal is there). Record is called with enforcer locks held: it copies
// the record into a slot and wakes the followers, nothing more.
type flowRing struct {
	mu   sync.Mutex
	buf  []dataplane.Record
	next uint64 // Seq of the next record; buf[(seq-1) % len] holds seq
	// changed is closed (and replaced) when records arrive: followers
	// wait on it. waited says a follower took it since it was made: only
	// then does Record replace it (no allocation otherwise).
	changed chan struct{}
	waited  bool
}

func newFlowRing(size int) *flowRing {
	if size <= 0 {
		size = DefaultFlowRing
	}
	return &flowRing{buf: make([]dataplane.Record, size), next: 1, changed: make(chan struct{})}
}

// Record implements dataplane.Sink.
func (r *flowRing) Record(rec *dataplane.Record) {
	r.mu.Lock()
	r.buf[(r.next-1)%uint64(len(r.buf))] = *rec
	r.next++
	var ch chan struct{}
	if r.waited {
		ch, r.changed, r.waited = r.changed, make(chan struct{}), false
	}
	r.mu.Unlock()
	if ch != nil {
		close(ch)
	}
}

// since appends to dst copies of the records after seq (at most the
// ring's size, oldest first) and returns it with a channel closed when more
// arrive. The copies are judged by the caller outside the lock: the
// enforcer never waits for a query's filters.
func (r *flowRing) since(seq uint64, dst []Flow) ([]Flow, <-chan struct{}) {
	r.mu.Lock()
	defer r.mu.Unlock()
	first := uint64(1)
	if n := uint64(len(r.buf)); r.next > n+1 {
		first = r.next - n
	}
	if seq+1 > first {
		first = seq + 1
	}
	for s := first; s < r.next; s++ {
		dst = append(dst, Flow{Seq: s, Record: r.buf[(s-1)%uint64(len(r.buf))]})
	}
	r.waited = true
	return dst, r.changed
}

// FlowRingStats is the ring's size and fill (`trireme stats`).
type FlowRingStats struct {
	// Size is the most records it keeps (observe.flowRing); Records how
	// many it holds; Total how many it was given since the daemon started
	// (the last record's seq: Total - Records were pushed out).
	Size    int    `json:"size"`
	Records int    `json:"records"`
	Total   uint64 `json:"total"`
}

// ringStats returns the ring's FlowRingStats.
func (r *flowRing) ringStats() FlowRingStats {
	r.mu.Lock()
	defer r.mu.Unlock()
	return FlowRingStats{Size: len(r.buf), Records: int(min(r.next-1, uint64(len(r.buf)))), Total: r.next - 1}
}

// stats returns the ring's size and how many records it holds.
func (r *flowRing) stats() (size, held int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.buf), int(min(r.next-1, uint64(len(r.buf))))
}

// teeSink hands each record to several sinks (the flow log, the ring).
type teeSink []dataplane.Sink

func (t teeSink) Record(r *dataplane.Record) {
	for _, s := range t {
		s.Record(r)
	}
}
