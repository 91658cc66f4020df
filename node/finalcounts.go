package node

import (
	"github.com/trireme-go/trireme/dataplane"
	"github.com/trireme-go/trireme/netsetup/steer"
)

// Final records of flows the kernel carried. An authorized flow's packets
// stay in the kernel, where each of its two entries counts them; the
// enforcer (Config.KernelCounts) leaves it to the daemon to add those
// counts to the flow's final record:
//
//   - a flow that ends while the kernel holds it (RST, idle, eviction,
//     policy change, replaced by a new connection) hands its record over
//     on its Revoke note; the kernel loop reads the entries' counters
//     right before the transaction that removes them, adds them to the
//     record and writes it;
//   - a flow that closed with FINs is revoked at once (so a new handshake
//     on the 4-tuple reaches the enforcers), its record comes at the end of
//     the closing timer: that revoke (Note.Count) reads the counters too
//     and gives them back to the enforcer (AddKernelCounts), whose record
//     then carries them;
//   - a PU removed: its flows' records take the counts from one dump of
//     its sets, read before the sets go.
//
// Records whose counts could not be read (a failed transaction, a daemon
// stopping) are written without them (kernelCounted false).

// finalRevoke is a revoke that reads the kernel's counts first.
type finalRevoke struct {
	note   dataplane.Note
	counts steer.FinalCounts
}

// deliverFinals passes on the counts read by a batch's revokes (ok: the
// batch was committed, the counts are the entries' last).
func (d *Daemon) deliverFinals(finals []*finalRevoke, ok bool) {
	for _, f := range finals {
		c := f.counts
		if !ok {
			c = steer.FinalCounts{}
		}
		n := &f.note
		if n.Record != nil {
			addCounts(n.Record, c)
			d.records.Record(n.Record)
			continue
		}
		if c.Found {
			out, in := asFrames(c.Out, c.In)
			d.enf.AddKernelCounts(n, out.Packets, out.Bytes, in.Packets, in.Bytes)
		}
	}
}

func addCounts(r *dataplane.Record, c steer.FinalCounts) {
	if !c.Found {
		return
	}
	out, in := asFrames(c.Out, c.In)
	r.PacketsOut += out.Packets
	r.BytesOut += out.Bytes
	r.PacketsIn += in.Packets
	r.BytesIn += in.Bytes
	r.KernelCounted = true
}

// ethHeaderLen is the Ethernet header of a frame without VLAN tags.
const ethHeaderLen = 14

// asFrames puts the kernel's counts of a flow's entries in the
// dataplane's unit, Ethernet frames: the egress hook (toward the PU)
// counts frames, the ingress hook (leaving the PU) IP packets, so each
// packet leaving the PU gets its Ethernet header back.
func asFrames(out, in steer.FlowCount) (steer.FlowCount, steer.FlowCount) {
	out.Bytes += ethHeaderLen * out.Packets
	return out, in
}

// recordUncounted writes the record a note carries, without the kernel's
// counts (they cannot be read: the PU is going, or the daemon stopping).
func (d *Daemon) recordUncounted(n *dataplane.Note) {
	if n.Record != nil {
		d.records.Record(n.Record)
	}
}

// drainFinals writes the records still queued for the kernel loop when it
// stops.
func (d *Daemon) drainFinals() {
	for {
		select {
		case op := <-d.ops:
			if op.final != nil {
				d.recordUncounted(&op.final.note)
			}
		default:
			return
		}
	}
}

// recordRemoved writes the final records of a removed PU's flows (the
// notes of Enforcer.RemovePU) with what its sets counted, read in one dump
// before they are deleted.
func (d *Daemon) recordRemoved(p *livePU, notes []dataplane.Note) {
	var counts map[steer.Tuple]steer.FlowCount
	for i := range notes {
		n := &notes[i]
		if n.Record == nil {
			continue
		}
		if counts == nil {
			var err error
			if counts, err = d.steer.FlowCounters(p.steer); err != nil {
				d.log.Debug("reading the kernel's flow counters", "pu", p.info.ID, "err", err)
				counts = map[steer.Tuple]steer.FlowCount{}
			}
		}
		t := steer.Tuple{Src: n.Local.Addr(), Dst: n.Remote.Addr(), Proto: n.Proto, SrcPort: n.Local.Port(), DstPort: n.Remote.Port()}
		out, okOut := counts[t]
		in, okIn := counts[t.Reverse()]
		addCounts(n.Record, steer.FinalCounts{Out: out, In: in, Found: okOut || okIn})
		d.records.Record(n.Record)
	}
}
