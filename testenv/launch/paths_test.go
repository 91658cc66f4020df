package launch_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/trireme-go/trireme/node"
	"github.com/trireme-go/trireme/testenv"
	"github.com/trireme-go/trireme/testenv/launch"
)

// The real daemon, given a config whose file names are all relative, puts
// its socket, state and flow log next to the config file, not in its
// working directory.
func TestDaemonRelativePaths(t *testing.T) {
	n := testenv.NewNode(t, testenv.NodeOptions{})
	dir := t.TempDir()
	psk, err := os.ReadFile(filepath.Join(testenv.PSKDir(t), "psk"))
	if err != nil {
		t.Fatal(err)
	}
	for name, data := range map[string][]byte{"psk": psk, "policy.yaml": []byte("policies: []\n")} {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	yaml := "node: rel-" + n.Suffix + "\nsecrets: {pskFile: psk}\npolicy: policy.yaml\nsocket: run/t.sock\nstateDir: state\n" +
		"flowLog: logs/flows.jsonl\nbridge: {name: " + n.Bridge + ", subnet: " + n.Subnet.String() + "}\n"
	path := filepath.Join(dir, "config.yaml")
	if err := os.WriteFile(path, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := node.LoadConfig(path) // what the test reads: absolute names
	if err != nil {
		t.Fatal(err)
	}
	d := &launch.Daemon{Binary: testenv.Binary(t), Netns: n.Name, Config: cfg, ConfigPath: path, LogPath: filepath.Join(dir, "daemon.log")}
	t.Cleanup(func() {
		d.Kill()
		n.Run(context.Background(), testenv.Binary(t), "daemon", "purge", "--config", path)
	})
	if err := d.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"run/t.sock", "state/state.json", "logs/flows.jsonl"} {
		if _, err := os.Stat(filepath.Join(dir, p)); err != nil {
			t.Errorf("daemon with relative paths: %v", err)
		}
	}
	if _, err := d.Client().Stats(); err != nil {
		t.Fatalf("control API at %s: %v", cfg.Socket, err)
	}
	if err := d.Stop(syscall.SIGTERM, 15*time.Second); err != nil {
		t.Fatal(err)
	}

	// An empty file name stops the daemon with the field's file:line.
	if err := os.WriteFile(path, []byte(strings.Replace(yaml, "stateDir: state", "stateDir: ''", 1)), 0o600); err != nil {
		t.Fatal(err)
	}
	err = d.Start(context.Background())
	if err == nil || !strings.Contains(err.Error(), path+":5:11: stateDir: empty") {
		t.Fatalf("start with an empty stateDir: %v", err)
	}
}
