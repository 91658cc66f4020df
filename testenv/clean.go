package testenv

import (
	"os"
	"strings"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/trireme-go/trireme/netsetup"
	"github.com/vishvananda/netlink"
)

// Leftovers lists what a test whose names carry sfx (its Suffix) left in
// the host: testenv namespaces whose name contains sfx, host links whose
// name contains sfx, and nftables tables of the host namespace named with
// the trireme prefix and containing sfx. It judges that test only: what
// other tests, demos or daemons on the machine made is not its business,
// so an empty sfx (everything) is refused.
func Leftovers(sfx string) []string {
	if sfx == "" {
		return []string{"testenv: Leftovers needs the suffix of what the test made"}
	}
	var left []string
	ents, _ := os.ReadDir(netsetup.NetnsDir)
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), NamePrefix) && strings.Contains(e.Name(), sfx) {
			left = append(left, "netns "+e.Name())
		}
	}
	links, _ := netsetup.Dump(netlink.LinkList)
	for _, l := range links {
		if strings.Contains(l.Attrs().Name, sfx) {
			left = append(left, "link "+l.Attrs().Name)
		}
	}
	if c, err := nftables.New(); err == nil {
		tables, _ := c.ListTables()
		for _, t := range tables {
			if strings.HasPrefix(t.Name, "trireme_") && strings.Contains(t.Name, sfx) {
				left = append(left, "nft table "+t.Name)
			}
		}
	}
	return left
}

// AssertNothingLeft registers a cleanup, run after every other cleanup of
// the test (register it first), that fails the test if anything named with
// sfx is left behind. Namespace teardown is asynchronous in the kernel, so
// it waits up to 5 s for links to disappear.
func AssertNothingLeft(t testing.TB, sfx string) {
	t.Helper()
	t.Cleanup(func() {
		deadline := time.Now().Add(5 * time.Second)
		for {
			left := Leftovers(sfx)
			if len(left) == 0 {
				return
			}
			if time.Now().After(deadline) {
				t.Errorf("testenv: left behind: %v", left)
				return
			}
			time.Sleep(50 * time.Millisecond)
		}
	})
}
