package launch_test

import (
	"bytes"
	"context"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/trireme-go/trireme/node"
	"github.com/trireme-go/trireme/testenv"
	"github.com/trireme-go/trireme/testenv/launch"
)

// The real daemon under a NOTIFY_SOCKET, as systemd runs a Type=notify
// unit: it sends READY=1 once it enforces (its /readyz answers 200 by
// then) and STOPPING=1 on SIGTERM; `trireme stats --wait-ready`, started
// before the daemon, waits for it and succeeds; /healthz says alive.
func TestDaemonReadiness(t *testing.T) {
	n := testenv.NewNode(t, testenv.NodeOptions{})
	dir := t.TempDir()
	pol := filepath.Join(dir, "policy.yaml")
	if err := os.WriteFile(pol, []byte("policies: []\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := &node.Config{Node: "ready-" + n.Suffix, Secrets: node.Secrets{PSKFile: filepath.Join(testenv.PSKDir(t), "psk")}, Policy: pol,
		Socket: filepath.Join(dir, "t.sock"), StateDir: filepath.Join(dir, "state"), FlowLog: filepath.Join(dir, "flows.jsonl"),
		Bridge: node.Bridge{Name: n.Bridge, Subnet: node.Prefix{Prefix: n.Subnet}}}
	d, err := launch.Write(dir, testenv.Binary(t), cfg)
	if err != nil {
		t.Fatal(err)
	}
	d.Netns = n.Name
	notify := filepath.Join(dir, "notify")
	l, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: notify, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	d.Env = []string{"NOTIFY_SOCKET=" + notify}
	t.Cleanup(func() {
		d.Kill()
		n.Run(context.Background(), testenv.Binary(t), "daemon", "purge", "--config", d.ConfigPath)
	})

	// Before the daemon: --wait-ready waits; with a short timeout it fails
	// naming the missing daemon.
	out, err := exec.Command(testenv.Binary(t), "stats", "--socket", cfg.Socket, "--wait-ready", "--timeout", "300ms").CombinedOutput()
	if err == nil || !strings.Contains(string(out), "not ready after 300ms") {
		t.Fatalf("--wait-ready with no daemon: %v, %s", err, out)
	}
	var waited bytes.Buffer
	wait := exec.Command(testenv.Binary(t), "stats", "--socket", cfg.Socket, "--wait-ready", "--timeout", "60s")
	wait.Stdout, wait.Stderr = &waited, &waited
	if err := wait.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { wait.Process.Kill(); wait.Wait() })

	d.Ready = func(c *node.Client) error { return c.Healthy() } // return as soon as it is alive
	if err := d.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	read := func() string {
		buf := make([]byte, 512)
		l.SetReadDeadline(time.Now().Add(30 * time.Second))
		k, err := l.Read(buf)
		if err != nil {
			t.Fatalf("no notification from the daemon: %v; log:\n%s", err, d.LogTail(20))
		}
		return string(buf[:k])
	}
	if got := read(); !strings.HasPrefix(got, "READY=1") {
		t.Fatalf("first notification %q, want READY=1", got)
	}
	c := d.Client()
	if err := c.Ready(); err != nil {
		t.Fatalf("after READY=1, /readyz: %v", err)
	}
	if err := c.Healthy(); err != nil {
		t.Fatalf("/healthz: %v", err)
	}
	if err := wait.Wait(); err != nil || !strings.Contains(waited.String(), "node "+cfg.Node) {
		t.Fatalf("stats --wait-ready started before the daemon: %v, %s", err, waited.String())
	}
	if err := d.Stop(syscall.SIGTERM, 15*time.Second); err != nil {
		t.Fatal(err)
	}
	if got := read(); got != "STOPPING=1" {
		t.Fatalf("notification on SIGTERM %q, want STOPPING=1", got)
	}
}
