package main

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/spf13/cobra"
)

// The end-to-end tests of `trireme run` against a live daemon are in
// node/run_test.go; these cover what happens before a daemon is involved.

func TestDefaultRunName(t *testing.T) {
	for _, tc := range []struct {
		cmd  string
		pid  int
		want string
	}{
		{"trireme", 42, "trireme-42"},
		{"/usr/bin/Python3.11", 7, "python3-11-7"},
		{"./my_server", 123, "my-server-123"},
		{"___", 9, "run-9"},
		{"/", 9, "run-9"},
		{"ÄÖÜ", 9, "run-9"},
		{"a-very-long-command-name-that-goes-on-and-on", 4194304, "a-very-long-command-name-4194304"},
		{"abcdefghijklmnopqrstuvwx-yz", 1234567, "abcdefghijklmnopqrstuvwx-1234567"},
	} {
		got := defaultRunName(tc.cmd, tc.pid)
		if got != tc.want {
			t.Errorf("defaultRunName(%q, %d) = %q, want %q", tc.cmd, tc.pid, got, tc.want)
		}
		if len(got) > 32 || !validPUName(got) {
			t.Errorf("defaultRunName(%q) = %q: not a valid PU name", tc.cmd, got)
		}
	}
}

// validPUName mirrors the daemon's rule: [a-z0-9], '-' inside, 1-32.
func validPUName(s string) bool {
	if len(s) == 0 || len(s) > 32 || s[0] == '-' || s[len(s)-1] == '-' {
		return false
	}
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '-') {
			return false
		}
	}
	return true
}

// TestRunErrors: failures before the command runs have their own exit
// codes, and the command is not run.
func TestRunErrors(t *testing.T) {
	dir := t.TempDir()
	marker := filepath.Join(dir, "ran")
	noDaemon := filepath.Join(dir, "no-daemon.sock")
	for _, tc := range []struct {
		name string
		args []string
		code int // 0: a usage error that is not an exitError
	}{
		{"command not found", []string{"--socket", noDaemon, "--", "no-such-command-trireme-test"}, runExitNotFound},
		{"no daemon", []string{"--socket", noDaemon, "--label", "app=x", "--", "touch", marker}, runExitCannot},
		{"reserved label", []string{"--socket", noDaemon, "--label", "@sys:kind=docker", "--", "touch", marker}, runExitCannot},
		{"bad label", []string{"--socket", noDaemon, "--label", "novalue", "--", "touch", marker}, runExitCannot},
		{"no command", []string{"--socket", noDaemon, "--label", "app=x"}, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root := &cobra.Command{Use: "trireme", SilenceUsage: true, SilenceErrors: true}
			root.AddCommand(runCommand())
			root.SetArgs(append([]string{"run"}, tc.args...))
			err := root.Execute()
			if err == nil {
				t.Fatal("succeeded")
			}
			var ee *exitError
			switch {
			case tc.code == 0 && errors.As(err, &ee):
				t.Fatalf("got exit code %d (%v), want a usage error", ee.code, err)
			case tc.code != 0 && (!errors.As(err, &ee) || ee.code != tc.code):
				t.Fatalf("err %v, want exit code %d", err, tc.code)
			}
			if _, err := os.Stat(marker); err == nil {
				t.Fatal("the command ran")
			}
		})
	}
}
