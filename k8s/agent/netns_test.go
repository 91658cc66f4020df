package agent_test

import (
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/trireme-go/trireme/k8s/agent"
	"github.com/trireme-go/trireme/testenv"
)

// The finder locates a namespace by address among those of a directory,
// reads namespaces again when nothing matches (an address added since),
// and refuses an address two namespaces hold.
func TestNetnsFinder(t *testing.T) {
	testenv.RequireRoot(t)
	n := testenv.NewNode(t, testenv.NodeOptions{Subnet: netip.MustParsePrefix("10.66.0.0/24")})
	a, b := n.AddPU(), n.AddPU()
	// A directory of our own with links to the two namespaces' files:
	// /var/run/netns holds every test's namespaces.
	dir := t.TempDir()
	link := func(name, target string) {
		if err := os.Symlink(target, filepath.Join(dir, name)); err != nil {
			t.Fatal(err)
		}
	}
	link("a", filepath.Join("/var/run/netns", a.Name))
	f := agent.NewNetnsFinder(dir)
	if got, err := f.Find([]netip.Addr{a.Addr}); err != nil || got != filepath.Join(dir, "a") {
		t.Fatalf("find a: %q %v", got, err)
	}
	if _, err := f.Find([]netip.Addr{b.Addr}); err != agent.ErrNoNetns {
		t.Fatalf("find b before its namespace is in the directory: %v, want ErrNoNetns", err)
	}
	link("b", filepath.Join("/var/run/netns", b.Name))
	if got, err := f.Find([]netip.Addr{b.Addr}); err != nil || got != filepath.Join(dir, "b") {
		t.Fatalf("find b: %q %v", got, err)
	}
	// A second namespace claiming a's address.
	link("a-again", filepath.Join("/var/run/netns", a.Name))
	if _, err := f.Find([]netip.Addr{a.Addr}); err == nil || !strings.Contains(err.Error(), "several") {
		t.Fatalf("an address two namespaces hold: %v", err)
	}
}
