package launch_test

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/trireme-go/trireme/node"
	"github.com/trireme-go/trireme/testenv"
	"github.com/trireme-go/trireme/testenv/launch"
)

// StartIn runs a process in the given namespace, not the caller's.
func TestStartInNamespace(t *testing.T) {
	n := testenv.NewNode(t, testenv.NodeOptions{})
	want, err := os.Readlink(filepath.Join("/proc/self/fd", strconv.Itoa(int(n.NS))))
	if err != nil {
		t.Fatal(err)
	}
	self, _ := os.Readlink("/proc/thread-self/ns/net")
	var out bytes.Buffer
	cmd := exec.Command("readlink", "/proc/self/ns/net")
	cmd.Stdout = &out
	p, err := launch.StartIn(n.Name, cmd)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Err(); err != nil {
		t.Fatal(err)
	}
	if got := strings.TrimSpace(out.String()); got != want || got == self {
		t.Fatalf("child in %s, want %s (the node's), caller in %s", got, want, self)
	}
	if _, err := launch.StartIn("trt-no-such-namespace", exec.Command("true")); err == nil {
		t.Fatal("StartIn in a missing namespace: no error")
	}
}

// The launcher writes a config that parses, starts the real daemon in the
// node namespace, stops and restarts it, and reports a daemon that cannot
// start with the end of its log.
func TestDaemonLifecycle(t *testing.T) {
	n := testenv.NewNode(t, testenv.NodeOptions{})
	dir := t.TempDir()
	psk := filepath.Join(testenv.PSKDir(t), "psk")
	pol := filepath.Join(dir, "policy.yaml")
	if err := os.WriteFile(pol, []byte("policies: []\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := &node.Config{Node: "launch-" + n.Suffix, Secrets: node.Secrets{PSKFile: psk}, Policy: pol,
		Socket: filepath.Join(dir, "t.sock"), StateDir: filepath.Join(dir, "state"), FlowLog: filepath.Join(dir, "flows.jsonl"),
		Bridge: node.Bridge{Name: n.Bridge, Subnet: node.Prefix{Prefix: n.Subnet}}}
	d, err := launch.Write(dir, testenv.Binary(t), cfg)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := node.LoadConfig(d.ConfigPath); err != nil {
		t.Fatalf("the written config does not load: %v", err)
	}
	d.Netns = n.Name
	t.Cleanup(func() {
		d.Kill()
		n.Run(context.Background(), testenv.Binary(t), "daemon", "purge", "--config", d.ConfigPath)
	})
	for round := 0; round < 2; round++ { // start, then a restart
		if err := d.Start(context.Background()); err != nil {
			t.Fatal(err)
		}
		if d.PID() == 0 {
			t.Fatal("running, yet no PID")
		}
		if err := d.Start(context.Background()); err == nil || !strings.Contains(err.Error(), "already running") {
			t.Fatalf("second Start while running: %v", err)
		}
		st, err := d.Client().Stats()
		if err != nil {
			t.Fatal(err)
		}
		if st.PUs != 0 {
			t.Errorf("a fresh daemon polices %d PUs", st.PUs)
		}
		if err := d.Stop(syscall.SIGTERM, 15*time.Second); err != nil {
			t.Fatal(err)
		}
		if d.PID() != 0 {
			t.Fatal("stopped, yet a PID")
		}
	}
	if !strings.Contains(d.Logs(), "level=") {
		t.Errorf("no log kept in %s: %q", d.LogPath, d.Logs())
	}

	// A daemon that cannot start: its error, with the end of its log.
	if err := os.Remove(pol); err != nil {
		t.Fatal(err)
	}
	err = d.Start(context.Background())
	if err == nil || !strings.Contains(err.Error(), "daemon exited") || !strings.Contains(err.Error(), "policy") {
		t.Fatalf("start without its policy file: %v", err)
	}
}
