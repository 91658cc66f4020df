package demo

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/trireme-go/trireme/netsetup"
	"github.com/trireme-go/trireme/testenv"
)

// CleanStale removes what a killed demo left and nothing of a live one.
func TestCleanStale(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("needs root (network namespaces): run as root")
	}
	dead := exec.Command("true")
	if err := dead.Run(); err != nil {
		t.Fatal(err)
	}
	deadPID, livePID := dead.Process.Pid, os.Getppid()
	u := testenv.Suffix()[:4] // unique to this run: others make the same kinds of names
	names := map[string]bool{ // name -> should survive
		fmt.Sprintf("%s%d-%s-node", NamePrefix, deadPID, u):  false,
		fmt.Sprintf("%s%d-%s-0", runPrefix, deadPID, u):      false,
		fmt.Sprintf("%s%d-%s-node", NamePrefix, livePID, u):  true,
		fmt.Sprintf("%sx%d-%s-node", NamePrefix, deadPID, u): true, // not a demo's name
	}
	for n := range names {
		h, err := netsetup.CreateNetns(n)
		if err != nil {
			t.Fatal(err)
		}
		h.Close()
		t.Cleanup(func() { netsetup.DeleteNetns(n) })
	}
	deadDir := filepath.Join(os.TempDir(), fmt.Sprintf("%s%d-test%s", tmpPrefix, deadPID, u))
	liveDir := filepath.Join(os.TempDir(), fmt.Sprintf("%s%d-test%s", tmpPrefix, livePID, u))
	for _, d := range []string{deadDir, liveDir} {
		if err := os.MkdirAll(filepath.Join(d, "docker"), 0o700); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.RemoveAll(d) })
	}
	removed, err := CleanStale()
	if err != nil {
		t.Fatal(err)
	}
	// Only this run's names count: another run's dead demo, made at the
	// same moment, is removed too and is not this test's business.
	var ours []string
	for _, r := range removed {
		if strings.Contains(r, u) {
			ours = append(ours, r)
		}
	}
	if len(ours) != 3 {
		t.Errorf("removed %v, want the dead demo's 2 namespaces and its directory", ours)
	}
	for n, keep := range names {
		if netsetup.NetnsExists(n) != keep {
			t.Errorf("namespace %s: exists=%v, want %v", n, !keep, keep)
		}
	}
	if _, err := os.Stat(deadDir); !os.IsNotExist(err) {
		t.Errorf("%s not removed: %v", deadDir, err)
	}
	if _, err := os.Stat(liveDir); err != nil {
		t.Errorf("%s of a live process removed: %v", liveDir, err)
	}
}
