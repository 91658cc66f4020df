package node

import (
	"context"
	"log/slog"
	"regexp"
	"slices"
	"sync"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/trireme-go/trireme/netsetup"
)

// tapGroup is the device group the TAPs to delete are moved to, to be
// deleted all at once ("trit").
const tapGroup = 0x74726974

// tapReaper deletes the TAPs of detached PUs in the background, several at
// a time: deleting a device waits for an RCU grace period in the kernel
// (16-24 ms per TAP measured), and a detach used to wait for two. A PU
// attached again before its old TAPs went takes them back (reclaim).
type tapReaper struct {
	log *slog.Logger
	// del is held while deleting, so that a reclaim waits for it; mu
	// guards pending only, so that a retire (a detach) never waits.
	del     sync.Mutex
	mu      sync.Mutex
	pending []string
	kick    chan struct{}
}

func newTapReaper(log *slog.Logger) *tapReaper {
	return &tapReaper{log: log, kick: make(chan struct{}, 1)}
}

// retire queues TAPs for deletion.
func (r *tapReaper) retire(names ...string) {
	r.mu.Lock()
	r.pending = append(r.pending, names...)
	r.mu.Unlock()
	select {
	case r.kick <- struct{}{}:
	default:
	}
}

// reclaim takes a TAP off the queue: it is about to be opened again. If
// it is being deleted, reclaim returns once it is gone.
func (r *tapReaper) reclaim(name string) {
	r.del.Lock()
	defer r.del.Unlock()
	r.mu.Lock()
	r.pending = slices.DeleteFunc(r.pending, func(n string) bool { return n == name })
	r.mu.Unlock()
}

// run deletes what is queued, a moment after the first retire (to gather
// more), until ctx ends; then it deletes what is left.
func (r *tapReaper) run(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			r.flush()
			return
		case <-r.kick:
		}
		select {
		case <-ctx.Done():
		case <-time.After(100 * time.Millisecond):
		}
		r.flush()
	}
}

// flush deletes the queued TAPs now.
func (r *tapReaper) flush() {
	r.del.Lock()
	defer r.del.Unlock()
	r.mu.Lock()
	names := r.pending
	r.pending = nil
	r.mu.Unlock()
	if len(names) == 0 {
		return
	}
	if err := netsetup.DeleteLinks(names, tapGroup); err != nil {
		r.log.Warn("deleting TAPs of detached PUs", "taps", len(names), "err", err)
	}
}

// tapName matches the TAP names puNames makes.
var tapName = regexp.MustCompile(`^tr[io][0-9a-f]{10}$`)

// strayTaps lists the TAPs in the daemon's namespace that carry its owner
// mark and are not in keep: those of PUs that went while no daemon ran, or
// whose deletion a crash interrupted.
func strayTaps(keep map[string]bool, owner string) []string {
	links, err := netsetup.Dump(netlink.LinkList)
	if err != nil {
		return nil
	}
	var out []string
	for _, l := range links {
		n := l.Attrs().Name
		if l.Type() == "tuntap" && tapName.MatchString(n) && l.Attrs().Alias == owner && !keep[n] {
			out = append(out, n)
		}
	}
	return out
}
