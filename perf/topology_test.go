package perf

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"syscall"
	"testing"

	"github.com/trireme-go/trireme/testenv"
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
	// A part unique to this run: another run of the same test on the
	// machine makes the same kinds of names with the same (dead, live) pids.
	u := testenv.Suffix()
	for _, tc := range []struct {
		name   string
		netns  string
		tmpDir string
		gone   bool
	}{
		{"dead run", fmt.Sprintf("%s%dx1-t%s-n1", nsPrefix, dead, u), fmt.Sprintf("%s%d-t%s-1", tmpPrefix, dead, u), true},
		{"live run (this one)", fmt.Sprintf("%s%dx999-t%s-n1", nsPrefix, os.Getpid(), u), fmt.Sprintf("%s%d-t%s-2", tmpPrefix, os.Getpid(), u), false},
		{"live run (pid 1)", fmt.Sprintf("%s1x1-t%s-n1", nsPrefix, u), fmt.Sprintf("%s1-t%s-3", tmpPrefix, u), false},
		{"not ours", fmt.Sprintf("tperfx%dx1%s", dead, u), fmt.Sprintf("%sx%d-t%s", tmpPrefix, dead, u), false},
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

// ourNamespaces, the leftover check of perf's tests, judges only this test
// process's namespaces: a live perf run's (another process) beside it is not
// reported, one of this process is.
func TestLeftoverCheckJudgesOnlyOwn(t *testing.T) {
	u := testenv.Suffix()
	other := fmt.Sprintf("%s%dx1-t%s-n1", nsPrefix, os.Getppid(), u)
	testenv.DecoyNetns(t, other)
	if left := ourNamespaces(t); slices.Contains(left, other) {
		t.Fatalf("another run's namespace %s reported as this test's: %v", other, left)
	}
	own := fmt.Sprintf("%s%dx999-t%s-n1", nsPrefix, os.Getpid(), u)
	testenv.DecoyNetns(t, own)
	if left := ourNamespaces(t); !slices.Contains(left, own) || slices.Contains(left, other) {
		t.Fatalf("ourNamespaces = %v, want %s and not %s", left, own, other)
	}
}
