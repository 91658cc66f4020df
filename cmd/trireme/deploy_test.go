package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/trireme-go/trireme/testenv"
	"github.com/trireme-go/trireme/testenv/repo"
)

// systemd-analyze verify accepts deploy/systemd/trireme.service, alone and
// with its filesystem.conf drop-in, without a warning (it exits 0 on
// unknown keys and bad values, printing them: any output fails the test).
// The unit's ExecStart is pointed at the binary under test (verify checks
// it is executable). Skipped only where systemd-analyze is not installed
// and CI does not require it (CI or TRIREME_REQUIRE_SYSTEMD_ANALYZE set).
func TestSystemdUnitVerifies(t *testing.T) {
	sa, err := exec.LookPath("systemd-analyze")
	if err != nil {
		if os.Getenv("CI") != "" || os.Getenv("TRIREME_REQUIRE_SYSTEMD_ANALYZE") != "" {
			t.Fatal("systemd-analyze is required here and not installed")
		}
		t.Skip("systemd-analyze not installed")
	}
	root, err := repo.Root()
	if err != nil {
		t.Fatal(err)
	}
	unit, err := os.ReadFile(filepath.Join(root, "deploy/systemd/trireme.service"))
	if err != nil {
		t.Fatal(err)
	}
	dropIn, err := os.ReadFile(filepath.Join(root, "deploy/systemd/filesystem.conf"))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"Type=notify", "ExecStart=/usr/local/bin/trireme daemon --config /etc/trireme/config.yaml",
		"CapabilityBoundingSet=CAP_NET_ADMIN CAP_NET_RAW CAP_SYS_ADMIN", "Restart=on-failure", "NoNewPrivileges=yes"} {
		if !strings.Contains(string(unit), want) {
			t.Errorf("the unit lacks %q", want)
		}
	}
	bin := testenv.Binary(t)
	for _, withDropIn := range []bool{false, true} {
		dir := t.TempDir()
		u := strings.ReplaceAll(string(unit), "/usr/local/bin/trireme", bin)
		// The config is not installed here: a false condition is not what
		// is verified.
		u = strings.ReplaceAll(u, "ConditionPathExists=/etc/trireme/config.yaml\n", "")
		if err := os.WriteFile(filepath.Join(dir, "trireme.service"), []byte(u), 0o644); err != nil {
			t.Fatal(err)
		}
		if withDropIn {
			if err := os.Mkdir(filepath.Join(dir, "trireme.service.d"), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(dir, "trireme.service.d", "filesystem.conf"), dropIn, 0o644); err != nil {
				t.Fatal(err)
			}
		}
		out, err := exec.Command(sa, "verify", filepath.Join(dir, "trireme.service")).CombinedOutput()
		if err != nil || len(strings.TrimSpace(string(out))) != 0 {
			t.Errorf("systemd-analyze verify (drop-in %v): %v\n%s", withDropIn, err, out)
		}
	}
	// The check can fail: a bad value is reported.
	dir := t.TempDir()
	bad := strings.ReplaceAll(string(unit), "/usr/local/bin/trireme", bin)
	bad = strings.ReplaceAll(bad, "Type=notify", "Type=notifyx")
	if err := os.WriteFile(filepath.Join(dir, "trireme.service"), []byte(bad), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, _ := exec.Command(sa, "verify", filepath.Join(dir, "trireme.service")).CombinedOutput(); !strings.Contains(string(out), "notifyx") {
		t.Errorf("systemd-analyze verify did not report a bad Type: %s", out)
	}
}
