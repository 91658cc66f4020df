package node_test

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/trireme-go/trireme/node"
	"github.com/trireme-go/trireme/testenv"
)

// projectSecret writes files into dir the way the kubelet updates a Secret
// volume: a new timestamped directory, then an atomic rename of the
// ..data link over the old one; the files themselves are links through
// ..data, created once.
func projectSecret(t *testing.T, dir string, files map[string][]byte) {
	t.Helper()
	ts := filepath.Join(dir, fmt.Sprintf("..%d", time.Now().UnixNano()))
	if err := os.MkdirAll(ts, 0o700); err != nil {
		t.Fatal(err)
	}
	for name, b := range files {
		if err := os.WriteFile(filepath.Join(ts, name), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	tmp := filepath.Join(dir, "..data_tmp")
	os.Remove(tmp)
	if err := os.Symlink(filepath.Base(ts), tmp); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, filepath.Join(dir, "..data")); err != nil {
		t.Fatal(err)
	}
	for name := range files {
		link := filepath.Join(dir, name)
		if _, err := os.Lstat(link); err != nil {
			if err := os.Symlink(filepath.Join("..data", name), link); err != nil {
				t.Fatal(err)
			}
		}
	}
}

const allowAllPolicy = `
targetNetworks: [10.80.0.0/16, 10.81.0.0/16]
policies:
  - name: all
    selector: "*"
    ingress: [{action: allow}]
    egress: [{action: allow}]
`

// waitCounter waits until the daemon's counter reaches n.
func waitCounter(t *testing.T, d *testenv.Daemon, name string, n uint64) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		st, err := d.Client().Stats()
		if err == nil && st.Counters[name] >= n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: counter %s did not reach %d (%v, %v)", d.Node.Name, name, n, st.Counters[name], err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func refused(err error) bool {
	return errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ECONNRESET)
}

// TestSecretsReload rotates the secrets of running daemons through their
// files, as a Kubernetes Secret volume is updated: PSK, and PKI with the CA
// key (each node issues itself a certificate). A node with the new secrets
// refuses the other's old tokens; once both have them, connections go
// through again; a change that cannot be loaded leaves the secrets in
// force. The daemons are never restarted.
func TestSecretsReload(t *testing.T) {
	for _, mode := range []string{"psk", "pki-ca-key"} {
		t.Run(mode, func(t *testing.T) {
			c := testenv.NewCluster(t, 2, 1)
			keys := func(i int) map[string][]byte {
				if mode == "psk" {
					return map[string][]byte{"psk": fmt.Appendf(nil, "%032d-rotation-%d", 7, i)}
				}
				ca := testenv.CADir(t)
				crt, err1 := os.ReadFile(filepath.Join(ca, "ca.crt"))
				key, err2 := os.ReadFile(filepath.Join(ca, "ca.key"))
				if err1 != nil || err2 != nil {
					t.Fatal(err1, err2)
				}
				return map[string][]byte{"ca.crt": crt, "ca.key": key}
			}
			first, second := keys(1), keys(2)
			var ds []*testenv.Daemon
			for _, n := range c.Nodes {
				dir := t.TempDir()
				projectSecret(t, dir, first)
				d := testenv.NewDaemon(t, n, testenv.DaemonOptions{SecretsDir: dir, Policy: allowAllPolicy,
					Configure: func(cfg *node.Config) {
						if mode != "psk" {
							cfg.Secrets = node.Secrets{CACert: filepath.Join(dir, "ca.crt"), CAKey: filepath.Join(dir, "ca.key")}
						}
					}})
				d.Start()
				d.Attach(n.PUs[0], "app=x")
				ds = append(ds, d)
			}
			client, server := c.Nodes[0].PUs[0], c.Nodes[1].PUs[0]
			addr := server.ServeEcho(80)
			pids := []int{ds[0].PID(), ds[1].PID()}
			if err := client.Echo(addr, "before", 3*time.Second); err != nil {
				t.Fatalf("before the rotation: %v", err)
			}
			// The server's node rotates first: the client's tokens are
			// refused, named.
			projectSecret(t, secretsDir(ds[1]), second)
			waitCounter(t, ds[1], "secrets-reloads", 1)
			if err := client.Echo(addr, "half", 3*time.Second); !refused(err) {
				t.Fatalf("only the server rotated: %v, want a refusal", err)
			}
			st, _ := ds[1].Client().Stats()
			// PSK: the token's signature; PKI: the certificate from the old CA.
			why := map[string]string{"psk": "bad-signature", "pki-ca-key": "untrusted-certificate"}[mode]
			if st.Drops[why] == 0 {
				t.Errorf("server's drops after the half rotation: %v, want %s", st.Drops, why)
			}
			projectSecret(t, secretsDir(ds[0]), second)
			waitCounter(t, ds[0], "secrets-reloads", 1)
			if err := client.Echo(addr, "after", 3*time.Second); err != nil {
				t.Fatalf("both rotated: %v", err)
			}
			// A broken change: refused, the secrets in force stay.
			bad := map[string][]byte{"psk": []byte("short")}
			if mode != "psk" {
				bad = map[string][]byte{"ca.crt": []byte("not a certificate"), "ca.key": second["ca.key"]}
			}
			projectSecret(t, secretsDir(ds[0]), bad)
			waitCounter(t, ds[0], "secrets-errors", 1)
			if err := client.Echo(addr, "after a bad change", 3*time.Second); err != nil {
				t.Fatalf("after a bad change: %v", err)
			}
			for i, d := range ds {
				if d.PID() != pids[i] {
					t.Errorf("node %d restarted", i)
				}
			}
		})
	}
}

// secretsDir is the directory of the daemon's secrets (from its config).
func secretsDir(d *testenv.Daemon) string {
	cfg, err := node.LoadConfig(d.Config)
	if err != nil {
		panic(err)
	}
	if cfg.Secrets.PSKFile != "" {
		return filepath.Dir(cfg.Secrets.PSKFile)
	}
	return filepath.Dir(cfg.Secrets.CACert)
}
