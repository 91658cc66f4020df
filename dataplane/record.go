package dataplane

import (
	"bufio"
	"encoding/json"
	"io"
	"net/netip"
	"sync"
	"time"

	"github.com/trireme-go/trireme/flow"
	"github.com/trireme-go/trireme/ipproto"
	"github.com/trireme-go/trireme/policy"
	"github.com/trireme-go/trireme/reason"
)

// End says how a flow's record came to be written.
type End string

const (
	EndClosed    End = "closed"     // FINs both ways, then the closing timer
	EndReset     End = "reset"      // a RST
	EndExpired   End = "expired"    // a timer ran out (idle, or a handshake never finished)
	EndEvicted   End = "evicted"    // removed to make room (table full)
	EndDenied    End = "denied"     // refused at the decision
	EndReplaced  End = "replaced"   // a new SYN reused the 4-tuple
	EndPURemoved End = "pu-removed" // its PU went away
	EndOpen      End = "open"       // still open when the replay ended
	EndRevoked   End = "revoked"    // a policy change denied it after it was established
	// EndRefused is the record of a SYN refused on a 4-tuple whose flow it
	// did not change (a forged or unauthorized SYN on a live connection):
	// an attempt of its own; the flow keeps its record.
	EndRefused End = "refused"
	// EndEstablished marks the interim record written when a flow is
	// established (Config.RecordEstablished); its final record follows.
	EndEstablished End = "established"
	// EndRejected is the client's record of a datagram flow the server's
	// enforcer refused (a reject): the server's record holds the decision.
	EndRejected End = "rejected"
)

// Record is one flow record: what was decided about a connection (or
// datagram flow) as seen by one local PU's enforcer, and its counters.
type Record struct {
	Time time.Time `json:"time"` // when it was decided (or first seen)
	End  End       `json:"end"`
	// EndTime is when the record was written.
	EndTime time.Time     `json:"endTime"`
	Proto   ipproto.Proto `json:"proto"`
	// Client and Server are the connection's ends (for datagrams: the
	// sender of the first packet is the client).
	Client netip.AddrPort `json:"client"`
	Server netip.AddrPort `json:"server"`
	VLAN   []uint16       `json:"vlan,omitempty"`
	// Direction is the local PU's view: "egress" when it is the client.
	Direction string    `json:"direction"`
	Local     PUInfo    `json:"local"`
	Remote    PeerInfo  `json:"remote"`
	Action    string    `json:"action"`
	Reason    string    `json:"reason"`
	Rule      *RuleInfo `json:"rule,omitempty"`
	Observed  *RuleInfo `json:"observed,omitempty"`
	// Packets and bytes from and to the local PU.
	PacketsOut uint64 `json:"packetsOut"`
	PacketsIn  uint64 `json:"packetsIn"`
	BytesOut   uint64 `json:"bytesOut"`
	BytesIn    uint64 `json:"bytesIn"`
	// KernelCounted says the counters include what the kernel counted on
	// the flow's authorized entries (the packets that never reached the
	// enforcer; Config.KernelCounts).
	KernelCounted bool `json:"kernelCounted,omitempty"`
	MidStream     bool `json:"midStream,omitempty"`
	Restored      bool `json:"restored,omitempty"`
	// Count is set on the daemon's aggregate records only: the number of
	// refused flows it stands for, all with the same local PU, direction,
	// client address (the client port is 0), server, protocol, action,
	// reason and rule (docs/daemon.md, "Flow records").
	Count uint64 `json:"count,omitempty"`
}

// PUInfo identifies the local PU.
type PUInfo struct {
	ID   string   `json:"id"`
	Node string   `json:"node,omitempty"`
	Tags []string `json:"tags,omitempty"`
}

// PeerInfo identifies the remote end: a PU (verified tags and node) or an
// external address.
type PeerInfo struct {
	IP       netip.Addr `json:"ip"`
	External bool       `json:"external"`
	Node     string     `json:"node,omitempty"`
	Tags     []string   `json:"tags,omitempty"`
}

// RuleInfo names a policy rule.
type RuleInfo struct {
	Policy    string `json:"policy"`
	Direction string `json:"direction"`
	Index     int    `json:"index"`
	Name      string `json:"name,omitempty"`
	Action    string `json:"action"`
}

// Sink receives flow records. Record is called with enforcer locks held:
// implementations must be quick (buffer, or hand off to a goroutine) and
// must not call back into the Enforcer.
type Sink interface {
	Record(r *Record)
}

// JSONLSink writes records as JSON lines (Record.AppendJSON, one Write per
// line).
type JSONLSink struct {
	mu  sync.Mutex
	w   io.Writer
	buf []byte
	err error
}

// ReadRecords reads flow records written by a JSONLSink (a flow log). Lines
// that are not records (a line cut short by a crash) are skipped.
func ReadRecords(r io.Reader) ([]Record, error) {
	var out []Record
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		var rec Record
		if json.Unmarshal(sc.Bytes(), &rec) == nil {
			out = append(out, rec)
		}
	}
	return out, sc.Err()
}

// NewJSONLSink writes to w.
func NewJSONLSink(w io.Writer) *JSONLSink { return &JSONLSink{w: w} }

// Record writes r as one line.
func (s *JSONLSink) Record(r *Record) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.err != nil {
		return
	}
	if s.buf, s.err = r.AppendJSON(s.buf[:0]); s.err != nil {
		return
	}
	s.buf = append(s.buf, '\n')
	_, s.err = s.w.Write(s.buf)
}

// Err returns the first write error.
func (s *JSONLSink) Err() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.err
}

func ruleInfo(r *policy.RuleRef) *RuleInfo {
	if r == nil {
		return nil
	}
	return &RuleInfo{Policy: r.Policy, Direction: r.Direction.String(), Index: r.Index, Name: r.Name, Action: r.Action.String()}
}

// finish ends a flow: its record (unless written at the denial) and, when
// it was authorized, a revoke note. The caller deletes the entry. With
// Config.KernelCounts the record of a flow still in the kernel rides on
// the revoke note, for the caller to add the kernel's counts.
func (e *Enforcer) finish(pu *PU, ent *flow.Entry[conn], end End, ns int64, out *Output) {
	if ent.State == flow.Closing && (end == EndExpired || end == EndEvicted) {
		end = EndClosed // it had closed (FINs both ways): an eviction only cut its linger short
	}
	v := &ent.Value
	revoke := v.authorized && out != nil && !v.released
	var rec *Record
	if !v.recorded {
		if revoke && e.kernelCounts {
			rec = e.buildRecord(pu, ent, end, ns)
			v.recorded = true
		} else {
			e.record(pu, ent, end, ns)
		}
	}
	if v.dg.held != nil {
		// Its handshake did not complete: the datagrams it held are lost.
		e.pending.remove(&ent.Key)
		e.release(pu, v, out, false, reason.Timeout)
	}
	if v.authorized {
		v.authorized = false
		if revoke {
			n := note(Revoke, pu, &ent.Key)
			n.Record = rec
			out.Notes = append(out.Notes, n)
		}
	}
}

// AddKernelCounts adds to the flow of n (a Revoke note with Count) what
// the kernel counted on its entries until it removed them: packets and
// bytes from the PU (out) and toward it (in). It reports false when the
// flow is gone (its record written) or the 4-tuple is another flow's now.
func (e *Enforcer) AddKernelCounts(n *Note, pktsOut, bytesOut, pktsIn, bytesIn uint64) bool {
	if n.PU == nil {
		return false
	}
	k := flow.Key{Local: n.Local.Addr().As16(), Remote: n.Remote.Addr().As16(),
		LocalPort: n.Local.Port(), RemotePort: n.Remote.Port(), PU: n.PU.index, Proto: n.Proto, VLAN: n.VLAN}
	sh := e.table.Shard(&k)
	sh.Lock()
	defer sh.Unlock()
	ent := sh.Get(&k)
	if ent == nil || ent.Created != n.Since || ent.Value.recorded {
		return false
	}
	ent.Packets[flow.FromPU] += pktsOut
	ent.Bytes[flow.FromPU] += bytesOut
	ent.Packets[flow.FromNet] += pktsIn
	ent.Bytes[flow.FromNet] += bytesIn
	ent.Value.kernelCounted = true
	return true
}

// recordEstablished writes the interim record of a flow just established,
// for a live daemon whose flows then close in the kernel: the flow log
// shows the decision at once, the final record (with counters) comes when
// the flow ends.
func (e *Enforcer) recordEstablished(pu *PU, ent *flow.Entry[conn], ns int64) {
	done := ent.Value.recorded
	e.record(pu, ent, EndEstablished, ns)
	ent.Value.recorded = done
}

// record writes the flow record of ent (once).
func (e *Enforcer) record(pu *PU, ent *flow.Entry[conn], end End, ns int64) {
	ent.Value.recorded = true
	if r := e.buildRecord(pu, ent, end, ns); r != nil {
		e.sink.Record(r)
	}
}

// buildRecord makes the flow record of ent; nil when there is no sink or
// nothing to record.
func (e *Enforcer) buildRecord(pu *PU, ent *flow.Entry[conn], end End, ns int64) *Record {
	v := &ent.Value
	if e.sink == nil || (v.role == roleNone) {
		return nil
	}
	k := &ent.Key
	local := netip.AddrPortFrom(k.LocalAddr(), k.LocalPort)
	remote := netip.AddrPortFrom(k.RemoteAddr(), k.RemotePort)
	at := v.decidedAt
	if at == 0 {
		at = ent.Created
	}
	r := &Record{
		Time: time.Unix(0, at).UTC(), End: end, EndTime: time.Unix(0, ns).UTC(),
		Proto:      k.Proto,
		Direction:  "egress",
		Client:     local,
		Server:     remote,
		Action:     v.dec.Action.String(),
		Reason:     v.reason.String(),
		Rule:       ruleInfo(v.dec.Rule),
		Observed:   ruleInfo(v.dec.Observed),
		PacketsOut: ent.Packets[flow.FromPU], PacketsIn: ent.Packets[flow.FromNet],
		BytesOut: ent.Bytes[flow.FromPU], BytesIn: ent.Bytes[flow.FromNet],
		MidStream:     v.pickedUp,
		Restored:      v.restored,
		KernelCounted: v.kernelCounted,
		Remote:        PeerInfo{IP: remote.Addr(), External: !v.target},
	}
	switch {
	case v.reason != reason.None:
		// Refused: by policy, or before any decision (token or packet
		// problem).
		if !v.decided {
			r.Action = "deny"
		}
	case k.Proto == ipproto.TCP && ent.State.HalfOpen() && end != EndReplaced:
		// A handshake that never completed (whatever one side decided on
		// the way): nothing was allowed to pass.
		r.Action = "none"
		if end == EndExpired || end == EndEvicted {
			r.Reason = reason.Timeout.String()
		}
	case !v.decided:
		r.Action = "none"
	case !v.dec.Allowed():
		r.Reason = reason.PolicyDenied.String()
	}
	if v.role == roleServer || v.role == roleDatagram && v.firstDir == FromNet {
		// The peer opened it: an inbound connection or datagram flow.
		r.Direction, r.Client, r.Server = "ingress", remote, local
	}
	if k.VLAN != ([2]uint16{}) {
		r.VLAN = []uint16{k.VLAN[0]}
		if k.VLAN[1] != 0 {
			r.VLAN = append(r.VLAN, k.VLAN[1])
		}
	}
	if pu != nil {
		r.Local = PUInfo{ID: pu.id, Node: e.node, Tags: pu.tagStrings()}
	}
	if v.peer != nil {
		r.Remote.Node = v.peer.Node
		r.Remote.Tags = v.peer.TagStrings()
	}
	return r
}
