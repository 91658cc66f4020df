package demo

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/trireme-go/trireme/netsetup"
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
	names := map[string]bool{ // name -> should survive
		fmt.Sprintf("%s%d-beef-node", NamePrefix, deadPID):  false,
		fmt.Sprintf("%s%d-beef-0", runPrefix, deadPID):      false,
		fmt.Sprintf("%s%d-beef-node", NamePrefix, livePID):  true,
		fmt.Sprintf("%sx%d-beef-node", NamePrefix, deadPID): true, // not a demo's name
	}
	for n := range names {
		h, err := netsetup.CreateNetns(n)
		if err != nil {
			t.Fatal(err)
		}
		h.Close()
		t.Cleanup(func() { netsetup.DeleteNetns(n) })
	}
	deadDir := filepath.Join(os.TempDir(), fmt.Sprintf("%s%d-test", tmpPrefix, deadPID))
	liveDir := filepath.Join(os.TempDir(), fmt.Sprintf("%s%d-test", tmpPrefix, livePID))
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
	if len(removed) != 3 {
		t.Errorf("removed %v, want the dead demo's 2 namespaces and its directory", removed)
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
