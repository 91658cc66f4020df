package node

import (
	"github.com/trireme-go/trireme/dataplane"
	"github.com/trireme-go/trireme/netsetup/steer"
)

// kernelCounter adds to flow records what the kernel counted of their
// packets: an authorized flow's packets stay in the kernel, where each
// entry of the PU's authorized set counts its own (steer.FlowCounters).
type kernelCounter interface {
	addKernelCounts(flows []Flow)
}

// addKernelCounts implements kernelCounter for the records of flows still
// open (the interim record written when the flow was established): their
// counters become the dataplane's plus the kernel's, read now (one dump of
// each PU's set). The final records of flows that ended get the kernel's
// counts to their end (finalcounts.go).
func (d *Daemon) addKernelCounts(flows []Flow) {
	byPU := map[string][]int{}
	for i := range flows {
		f := &flows[i]
		if f.End == dataplane.EndEstablished && f.Verdict == VerdictAllowed {
			byPU[f.Local.ID] = append(byPU[f.Local.ID], i)
		}
	}
	for id, idx := range byPU {
		p, ok := d.pus.get(id)
		if !ok {
			continue
		}
		counts, err := d.steer.FlowCounters(p.steer)
		if err != nil {
			d.log.Debug("reading the kernel's flow counters", "pu", id, "err", err)
			continue
		}
		for _, i := range idx {
			f := &flows[i]
			local, remote := f.Client, f.Server
			if f.Direction == "ingress" {
				local, remote = f.Server, f.Client
			}
			t := steer.Tuple{Src: local.Addr(), Dst: remote.Addr(), Proto: f.Proto}
			if f.Proto.HasPorts() {
				t.SrcPort, t.DstPort = local.Port(), remote.Port()
			}
			out, okOut := counts[t]
			in, okIn := counts[t.Reverse()]
			if !okOut && !okIn {
				continue // gone from the kernel (ended or expired there)
			}
			out, in = asFrames(out, in)
			f.PacketsOut += out.Packets
			f.BytesOut += out.Bytes
			f.PacketsIn += in.Packets
			f.BytesIn += in.Bytes
			f.KernelCounted = true
		}
	}
}
