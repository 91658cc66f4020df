package perf

import (
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/vishvananda/netns"
)

// deadPid returns a pid no process has.
func deadPid(t *testing.T) int {
	for pid := 4000000; pid > 1000; pid -= 997 {
		if syscall.Kill(pid, 0) == syscall.ESRCH {
			return pid
		}
	}
	t.Fatal("no free pid found")
	return 0
}

// CleanStale removes what a dead run left and nothing of a live one.
func TestCleanStale(t *testing.T) {
	dead := deadPid(t)
	for _, tc := range []struct {
		name   string
		netns  string
		tmpDir string
		gone   bool
	}{
		{"dead run", fmt.Sprintf("%s%dx1-test-n1", nsPrefix, dead), fmt.Sprintf("%s%d-test-1", tmpPrefix, dead), true},
		{"live run (this one)", fmt.Sprintf("%s%dx999-test-n1", nsPrefix, os.Getpid()), fmt.Sprintf("%s%d-test-2", tmpPrefix, os.Getpid()), false},
		{"live run (pid 1)", fmt.Sprintf("%s1x1-test-n1", nsPrefix), fmt.Sprintf("%s1-test-3", tmpPrefix), false},
		{"not ours", fmt.Sprintf("tperfx%dx1", dead), fmt.Sprintf("%sx%d-test", tmpPrefix, dead), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := createNamed(tc.netns); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { netns.DeleteNamed(tc.netns) })
			dir := filepath.Join(os.TempDir(), tc.tmpDir)
			if err := os.Mkdir(dir, 0o700); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { os.RemoveAll(dir) })
			if err := CleanStale(); err != nil {
				t.Fatal(err)
			}
			_, nsErr := os.Stat(filepath.Join("/run/netns", tc.netns))
			_, dirErr := os.Stat(dir)
			if gone := os.IsNotExist(nsErr); gone != tc.gone {
				t.Errorf("netns %s removed: %v, want %v", tc.netns, gone, tc.gone)
			}
			if gone := os.IsNotExist(dirErr); gone != tc.gone {
				t.Errorf("dir %s removed: %v, want %v", dir, gone, tc.gone)
			}
		})
	}
}
