package main

import (
	"bytes"
	"crypto/x509"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/trireme-go/trireme/identity"
	"github.com/trireme-go/trireme/tokens"
)

func runPKI(t *testing.T, args ...string) (string, error) {
	t.Helper()
	return execCommand(t, newPKICmd(), args...)
}

func fileMode(t *testing.T, p string) os.FileMode {
	t.Helper()
	st, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	return st.Mode().Perm()
}

// TestPKICommands: init a CA, issue two nodes, load them with LoadPKI and run
// a handshake between them; keys are 0600 and nothing is overwritten without
// --force.
func TestPKICommands(t *testing.T) {
	dir := t.TempDir()
	caDir := filepath.Join(dir, "ca")
	if _, err := runPKI(t, "init", "--out", caDir); err != nil {
		t.Fatal(err)
	}
	if m := fileMode(t, filepath.Join(caDir, "ca.key")); m != 0o600 {
		t.Errorf("ca.key mode %o, want 600", m)
	}
	caKey, _ := os.ReadFile(filepath.Join(caDir, "ca.key"))

	// No overwrite without --force; the key is untouched.
	if _, err := runPKI(t, "init", "--out", caDir); err == nil || !strings.Contains(err.Error(), "exists") {
		t.Errorf("second init: %v, want refusal", err)
	}
	if b, _ := os.ReadFile(filepath.Join(caDir, "ca.key")); !bytes.Equal(b, caKey) {
		t.Error("refused init changed ca.key")
	}

	var secrets []tokens.Secrets
	for _, node := range []string{"node-a", "node-b"} {
		out := filepath.Join(dir, node)
		if _, err := runPKI(t, "issue", "--ca", caDir, "--node", node, "--out", out); err != nil {
			t.Fatal(err)
		}
		if m := fileMode(t, filepath.Join(out, "node.key")); m != 0o600 {
			t.Errorf("node.key mode %o, want 600", m)
		}
		s, err := tokens.LoadPKI(filepath.Join(out, "ca.crt"), filepath.Join(out, "node.crt"), filepath.Join(out, "node.key"))
		if err != nil {
			t.Fatal(err)
		}
		if s.Node() != node || s.Kind() != "pki" {
			t.Errorf("loaded %s secrets for %q, want pki for %q", s.Kind(), s.Node(), node)
		}
		cert, err := tokens.ReadCertificate(filepath.Join(out, "node.crt"))
		if err != nil {
			t.Fatal(err)
		}
		if cert.KeyUsage != x509.KeyUsageDigitalSignature || !slices.Equal(cert.ExtKeyUsage, tokens.NodeExtKeyUsages) {
			t.Errorf("node certificate usages %v %v", cert.KeyUsage, cert.ExtKeyUsage)
		}
		secrets = append(secrets, s)
	}
	if _, err := runPKI(t, "issue", "--ca", caDir, "--node", "node-a", "--out", filepath.Join(dir, "node-a")); err == nil {
		t.Error("issue over an existing node: no error")
	}
	if _, err := runPKI(t, "issue", "--ca", caDir, "--node", "node-a", "--out", filepath.Join(dir, "node-a"), "--force"); err != nil {
		t.Errorf("issue --force: %v", err)
	}

	// The issued nodes authenticate each other.
	a, err := tokens.New(tokens.Config{Secrets: secrets[0]})
	if err != nil {
		t.Fatal(err)
	}
	b, err := tokens.New(tokens.Config{Secrets: secrets[1]})
	if err != nil {
		t.Fatal(err)
	}
	tags := identity.Tags{{Key: "app", Value: "web"}}
	now := time.Now()
	var cc, sc tokens.Conn
	syn, err := a.AppendSYN(nil, a.NewLocal(tags), &cc, now)
	if err != nil {
		t.Fatal(err)
	}
	peer, err := b.VerifySYN(syn, &sc, now)
	if err != nil || peer.Node != "node-a" || peer.Tags.Get("app") != "web" {
		t.Fatalf("VerifySYN: %v %v", peer, err)
	}
	synack, err := b.AppendSYNACK(nil, b.NewLocal(tags), &sc, now)
	if err != nil {
		t.Fatal(err)
	}
	if peer, err := a.VerifySYNACK(synack, &cc, now); err != nil || peer.Node != "node-b" {
		t.Fatalf("VerifySYNACK: %v %v", peer, err)
	}

	// A second CA's node is not trusted by the first CA's nodes.
	other := filepath.Join(dir, "other")
	if _, err := runPKI(t, "init", "--out", other, "--name", "other CA"); err != nil {
		t.Fatal(err)
	}
	if _, err := runPKI(t, "issue", "--ca", other, "--node", "node-x", "--out", filepath.Join(dir, "node-x")); err != nil {
		t.Fatal(err)
	}
	if _, err := tokens.LoadPKI(filepath.Join(caDir, "ca.crt"), filepath.Join(dir, "node-x", "node.crt"), filepath.Join(dir, "node-x", "node.key")); err == nil {
		t.Error("LoadPKI accepted a node certificate of another CA")
	}
}

func TestPKIErrors(t *testing.T) {
	dir := t.TempDir()
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"init without --out", []string{"init"}, "--out is required"},
		{"issue without --ca", []string{"issue", "--node", "n", "--out", dir}, "required"},
		{"issue from a missing CA", []string{"issue", "--ca", filepath.Join(dir, "none"), "--node", "n", "--out", dir}, "no such file"},
		{"bad node name", []string{"issue", "--ca", dir, "--node", "a b", "--out", dir}, "--node"},
		{"empty node name", []string{"issue", "--ca", dir, "--node", "", "--out", dir}, "--node"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := runPKI(t, tc.args...)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("%v: %v, want an error with %q", tc.args, err, tc.want)
			}
		})
	}
}
