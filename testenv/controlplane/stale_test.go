package controlplane

import (
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

// TestRemoveStale: a directory whose lock nobody holds (its test process
// died) is removed; one whose lock is held, or one being created (no lock
// file yet), stays.
func TestRemoveStale(t *testing.T) {
	mk := func() string {
		d, err := os.MkdirTemp("", dirPrefix)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.RemoveAll(d) })
		return d
	}
	dead, live, creating := mk(), mk(), mk()
	for _, d := range []string{dead, live} {
		if err := os.WriteFile(filepath.Join(d, "lock"), nil, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	held, err := os.Open(filepath.Join(live, "lock"))
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	if err := syscall.Flock(int(held.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		t.Fatal(err)
	}
	removeStale()
	if _, err := os.Stat(dead); !os.IsNotExist(err) {
		t.Errorf("stale %s: %v, want removed", dead, err)
	}
	for _, d := range []string{live, creating} {
		if _, err := os.Stat(d); err != nil {
			t.Errorf("%s removed: %v", d, err)
		}
	}
}
