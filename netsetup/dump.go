package netsetup

import (
	"errors"

	"github.com/vishvananda/netlink"
)

// dumpAttempts bounds Dump's retries: the kernel interrupts a dump each time
// the table changes under it, which happens when many links come and go.
const dumpAttempts = 20

// Dump runs a netlink dump (a LinkList, AddrList, RouteList…) again while the
// kernel reports it interrupted (NLM_F_DUMP_INTR: the table changed during the
// dump, so the result may be incomplete). A node that attaches hundreds of PUs
// at once sees this routinely; a partial answer must not pass for a full one.
func Dump[T any](list func() ([]T, error)) ([]T, error) {
	var (
		v   []T
		err error
	)
	for range dumpAttempts {
		v, err = list()
		if !errors.Is(err, netlink.ErrDumpInterrupted) {
			return v, err
		}
	}
	return v, err
}
