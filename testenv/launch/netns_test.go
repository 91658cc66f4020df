package launch_test

import (
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

// `trireme daemon --netns NAME`, started from the test's own namespace,
// runs wholly inside NAME: its process (every thread) is there, it builds
// its bridge and steering table there and nothing in the caller's; and
// `trireme daemon purge --netns NAME` removes them from there.
func TestDaemonNetnsFlag(t *testing.T) {
	n := testenv.NewNode(t, testenv.NodeOptions{})
	dir := t.TempDir()
	pol := filepath.Join(dir, "policy.yaml")
	if err := os.WriteFile(pol, []byte("policies: []\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	bridge := "tnb" + n.Suffix // created by the daemon: it must appear in NAME only
	cfg := &node.Config{Node: "nsflag-" + n.Suffix, Secrets: node.Secrets{PSKFile: filepath.Join(testenv.PSKDir(t), "psk")}, Policy: pol,
		Socket: filepath.Join(dir, "t.sock"), StateDir: filepath.Join(dir, "state"), FlowLog: filepath.Join(dir, "flows.jsonl"),
		Bridge: node.Bridge{Name: bridge, Subnet: node.Prefix{Prefix: n.Subnet}}}
	d, err := launch.Write(dir, testenv.Binary(t), cfg)
	if err != nil {
		t.Fatal(err)
	}
	d.Args = []string{"--netns", n.Name} // d.Netns stays "": started in the test's namespace
	t.Cleanup(func() {
		d.Kill()
		n.Run(context.Background(), testenv.Binary(t), "daemon", "purge", "--config", d.ConfigPath)
	})
	if err := d.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	want, err := os.Readlink(filepath.Join("/proc/self/fd", strconv.Itoa(int(n.NS))))
	if err != nil {
		t.Fatal(err)
	}
	tasks, err := os.ReadDir(filepath.Join("/proc", strconv.Itoa(d.PID()), "task"))
	if err != nil || len(tasks) < 2 {
		t.Fatalf("daemon threads: %d, %v", len(tasks), err)
	}
	for _, task := range tasks {
		got, err := os.Readlink(filepath.Join("/proc", strconv.Itoa(d.PID()), "task", task.Name(), "ns/net"))
		if err != nil {
			continue // the thread ended
		}
		if got != want {
			t.Fatalf("daemon thread %s in %s, want %s (%s)", task.Name(), got, want, n.Name)
		}
	}
	table := "trireme_" + cfg.Node
	inNode := func() string {
		out, _ := n.Run(context.Background(), "sh", "-c", "ip -o link show; nft list tables")
		return out
	}
	here := func() string {
		out, _ := runHere("sh", "-c", "ip -o link show; nft list tables")
		return out
	}
	if s := inNode(); !strings.Contains(s, bridge+":") || !strings.Contains(s, table) {
		t.Fatalf("in %s, no bridge %s or table %s:\n%s", n.Name, bridge, table, s)
	}
	if s := here(); strings.Contains(s, bridge) || strings.Contains(s, table) {
		t.Fatalf("the caller's namespace got the daemon's bridge or table:\n%s", s)
	}
	if _, err := d.Client().Stats(); err != nil {
		t.Fatal(err)
	}
	if err := d.Stop(syscall.SIGTERM, 15*time.Second); err != nil {
		t.Fatal(err)
	}
	if s := inNode(); !strings.Contains(s, table) {
		t.Fatalf("a stopped daemon left no steering table in %s (fail closed):\n%s", n.Name, s)
	}

	out, err := runHere(testenv.Binary(t), "daemon", "purge", "--netns", n.Name, "--config", d.ConfigPath)
	if err != nil {
		t.Fatalf("purge --netns: %v: %s", err, out)
	}
	if s := inNode(); strings.Contains(s, table) || strings.Contains(s, bridge+":") {
		t.Fatalf("after purge --netns, %s still holds the table or bridge:\n%s", n.Name, s)
	}

	// A namespace that does not exist is an error naming it.
	out, err = runHere(testenv.Binary(t), "daemon", "purge", "--netns", "trt-no-such-"+n.Suffix, "--config", d.ConfigPath)
	if err == nil || !strings.Contains(out, "trt-no-such-"+n.Suffix) {
		t.Fatalf("purge --netns of a missing namespace: %v: %s", err, out)
	}
}

// runHere runs a command in the test's own namespace.
func runHere(name string, args ...string) (string, error) {
	out, err := exec.Command(name, args...).CombinedOutput()
	return string(out), err
}
