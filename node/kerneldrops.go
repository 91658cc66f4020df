package node

import (
	"sync/atomic"

	"github.com/trireme-go/trireme/netsetup/steer"
	"github.com/trireme-go/trireme/reason"
)

// kernelDrops accumulates the kernel drop counters (anti-spoofing, packet
// budget) of removed PUs.
type kernelDrops struct{ spoofed, rogue, budget atomic.Uint64 }

func (k *kernelDrops) add(c steer.Counters) {
	k.spoofed.Add(c.Spoofed.Packets)
	k.rogue.Add(c.RogueRouter.Packets)
	k.budget.Add(c.InOverBudget.Packets)
}

// kernelDropsOf names a PU's kernel drop counters by reason (only those
// that counted something).
func kernelDropsOf(c steer.Counters) map[string]uint64 {
	var m map[string]uint64
	for code, n := range map[reason.Code]uint64{reason.SpoofedSource: c.Spoofed.Packets, reason.RogueRouter: c.RogueRouter.Packets,
		reason.PacketBudget: c.InOverBudget.Packets} {
		if n > 0 {
			if m == nil {
				m = map[string]uint64{}
			}
			m[code.String()] = n
		}
	}
	return m
}

// addKernelDrops adds the kernel's drop counters (every PU's, all, and
// those of PUs removed since the daemon started) to drops.
func (d *Daemon) addKernelDrops(drops map[string]uint64, all map[string]steer.Counters) {
	var sum steer.Counters
	for _, c := range all {
		sum.Spoofed.Packets += c.Spoofed.Packets
		sum.RogueRouter.Packets += c.RogueRouter.Packets
		sum.InOverBudget.Packets += c.InOverBudget.Packets
	}
	sum.Spoofed.Packets += d.retired.spoofed.Load()
	sum.RogueRouter.Packets += d.retired.rogue.Load()
	sum.InOverBudget.Packets += d.retired.budget.Load()
	for k, v := range kernelDropsOf(sum) {
		drops[k] += v
	}
}
