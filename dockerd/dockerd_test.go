package dockerd

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// A Start that fails says why and leaves nothing running or mounted (the
// full lifecycle runs in testenv/dockerenv's tests).
func TestStartFails(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (runs containerd and dockerd)")
	}
	if err := Available(); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		opts Options // Dir "-": a fresh temporary directory
		want string
	}{
		{"no dir", Options{Bridge: "br0"}, "Options.Dir and Options.Bridge are required"},
		{"no bridge", Options{Dir: "-"}, "Options.Dir and Options.Bridge are required"},
		{"missing netns", Options{Dir: "-", Bridge: "br0", Netns: "trdd-no-such-netns"}, "netns trdd-no-such-netns"},
		// dockerd refuses a bridge it did not make and cannot find.
		{"missing bridge", Options{Dir: "-", Bridge: "trddnobr0"}, "dockerd exited"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if tc.opts.Dir == "-" {
				dir, err := os.MkdirTemp("", "trdd") // short: unix socket paths are limited
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { os.RemoveAll(dir) })
				tc.opts.Dir = dir
			}
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			e, err := Start(ctx, tc.opts)
			if e != nil || err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Start: %v, %v; want nil, error with %q", e, err, tc.want)
			}
			if tc.opts.Dir == "" {
				return
			}
			procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
			for _, p := range procs {
				if b, err := os.ReadFile(p); err == nil && bytes.Contains(b, []byte(tc.opts.Dir+"/")) {
					t.Errorf("process left running: %s", bytes.ReplaceAll(b, []byte{0}, []byte{' '}))
				}
			}
			if mounts, _ := os.ReadFile("/proc/self/mountinfo"); bytes.Contains(mounts, []byte(tc.opts.Dir+"/")) {
				t.Errorf("mounts under %s left", tc.opts.Dir)
			}
		})
	}
}
