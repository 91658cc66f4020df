package node

import (
	"errors"
	"log/slog"

	"github.com/trireme-go/trireme/netsetup"
)

// backlogTuner keeps the kernel's per-CPU input backlog large enough for
// the PUs on the node's bridges: a broadcast (an ARP request) is queued once
// per bridge port, and a backlog smaller than the ports drops some copies,
// so that some pairs of PUs cannot resolve each other (netsetup.BacklogFor).
// The limit is machine-wide: it is only ever raised, and left raised when
// the daemon stops (the PUs stay). Calls are serialised by Daemon.changes.
type backlogTuner struct {
	path   string // netsetup.BacklogPath
	log    *slog.Logger
	limit  int  // the limit known to be in force (0: not read yet)
	warned bool // the limit is hidden: said once
}

// ensure makes room for ports bridge ports.
func (b *backlogTuner) ensure(ports int) {
	need := netsetup.BacklogFor(ports)
	if need <= b.limit || b.warned {
		return
	}
	before, after, err := netsetup.RaiseBacklog(b.path, need)
	switch {
	case errors.Is(err, netsetup.ErrBacklogHidden):
		// Run inside a network namespace: whoever runs it there owns the
		// machine's settings. The kernel's default is 1000.
		if need > 1000 {
			b.warned = true
			b.log.Warn("cannot check net.core.netdev_max_backlog from this network namespace: broadcasts (ARP) may not reach every PU",
				"pus", ports, "needed", need)
		}
	case err != nil:
		b.warned = true
		b.log.Warn("raising net.core.netdev_max_backlog: broadcasts (ARP) may not reach every PU", "pus", ports, "needed", need, "err", err)
	default:
		if after != before {
			b.log.Info("raised net.core.netdev_max_backlog for the PUs' bridges", "from", before, "to", after, "pus", ports)
		}
		b.limit = after
	}
}
