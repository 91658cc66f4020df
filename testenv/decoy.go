package testenv

import (
	"os/exec"
	"testing"

	"github.com/trireme-go/trireme/netsetup"
)

// Decoys are things a test makes to look like what another test, demo or
// daemon on the same machine would have made (a namespace, a process with
// a similar command line), to prove that its leftover checks judge only
// what the test itself made.

// DecoyProcess starts a process whose command line (/proc/PID/cmdline)
// starts with cmdline, e.g. "trireme daemon --config
// /tmp/trireme-demo-123-x/config.yaml": a sleep whose argv[0] is cmdline,
// killed by the test's cleanup. It returns the PID.
func DecoyProcess(t testing.TB, cmdline string) int {
	t.Helper()
	cmd := exec.Command("sleep", "600")
	cmd.Args = []string{cmdline, "600"} // sleep reads only its argument
	if err := cmd.Start(); err != nil {
		t.Fatalf("testenv: decoy process: %v", err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	return cmd.Process.Pid
}

// DecoyNetns creates a named namespace, deleted by the test's cleanup.
func DecoyNetns(t testing.TB, name string) {
	t.Helper()
	h, err := netsetup.CreateNetns(name)
	if err != nil {
		t.Fatalf("testenv: decoy namespace: %v", err)
	}
	h.Close()
	t.Cleanup(func() {
		if err := netsetup.DeleteNetns(name); err != nil {
			t.Errorf("testenv: decoy namespace: %v", err)
		}
	})
}
