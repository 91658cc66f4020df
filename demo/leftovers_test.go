package demo

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/trireme-go/trireme/testenv"
)

// TestLeftoversJudgeOnlyOwn: Leftovers(pid) reports what the demo of pid
// left (namespaces, directory, processes naming that directory) and none of
// what another demo, alive beside it, made with similar names.
func TestLeftoversJudgeOnlyOwn(t *testing.T) {
	testenv.RequireRoot(t)
	// Two live PIDs stand for two demos: this test process ("other") and
	// a decoy process ("own"), so CleanStale of a demo running meanwhile
	// removes neither.
	other := os.Getpid()
	things := func(pid int) (names []string) {
		sfx := fmt.Sprintf("%d-%s", pid, testenv.Suffix()[:4])
		node, run := NamePrefix+sfx+"-node", runPrefix+sfx+"-0"
		testenv.DecoyNetns(t, node)
		testenv.DecoyNetns(t, run)
		dir := filepath.Join(os.TempDir(), tmpPrefix+sfx)
		if err := os.Mkdir(dir, 0o700); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.RemoveAll(dir) })
		return []string{"netns " + node, "netns " + run, "directory " + dir}
	}
	otherThings := things(other)
	otherDir := strings.TrimPrefix(otherThings[2], "directory ")
	testenv.DecoyProcess(t, "trireme daemon --config "+filepath.Join(otherDir, "config.yaml"))

	ownPID := testenv.DecoyProcess(t, "sleep") // the "demo" whose leftovers we judge
	if left := Leftovers(ownPID); len(left) != 0 {
		t.Fatalf("another demo's things reported as this one's: %v", left)
	}
	want := things(ownPID)
	ownDir := strings.TrimPrefix(want[2], "directory ")
	daemon := testenv.DecoyProcess(t, "trireme daemon --config "+filepath.Join(ownDir, "config.yaml"))
	want = append(want, fmt.Sprintf("process %d: trireme daemon --config %s 600", daemon, filepath.Join(ownDir, "config.yaml")))
	left := Leftovers(ownPID)
	slices.Sort(left)
	slices.Sort(want)
	if !slices.Equal(left, want) {
		t.Fatalf("Leftovers(%d) =\n%v\nwant\n%v", ownPID, left, want)
	}
}
