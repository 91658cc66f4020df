package netsetup

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strconv"
	"strings"
)

// BacklogPath is the kernel's per-CPU input backlog limit
// (net.core.netdev_max_backlog). It is a machine-wide setting, visible only
// from the initial network namespace.
const BacklogPath = "/proc/sys/net/core/netdev_max_backlog"

// ErrBacklogHidden: the backlog limit cannot be read from this network
// namespace (a daemon run inside one, as the tests do).
var ErrBacklogHidden = errors.New("net.core.netdev_max_backlog is not visible from this network namespace")

// BacklogFor is the backlog a bridge with ports ports needs. A bridge
// delivers a broadcast (an ARP request) to each port in one pass, and each
// veth port queues its copy on the CPU's input backlog: with more ports than
// the backlog holds, some ports never see the request, and pairs of PUs
// cannot resolve each other's address. Room for four copies per port
// leaves space for the traffic in flight beside a broadcast.
func BacklogFor(ports int) int { return 4 * ports }

// RaiseBacklog raises the limit in the file at path (BacklogPath) to at
// least min; it never lowers it. It returns the limit before and after.
func RaiseBacklog(path string, min int) (before, after int, err error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return 0, 0, ErrBacklogHidden
	}
	if err != nil {
		return 0, 0, err
	}
	before, err = strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		return 0, 0, fmt.Errorf("%s: %q is not a number", path, strings.TrimSpace(string(b)))
	}
	if before >= min {
		return before, before, nil
	}
	if err := os.WriteFile(path, []byte(strconv.Itoa(min)+"\n"), 0o644); err != nil {
		return before, before, fmt.Errorf("raising %s from %d to %d: %w", path, before, min, err)
	}
	return before, min, nil
}
