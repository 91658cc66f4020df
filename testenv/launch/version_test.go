package launch_test

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/trireme-go/trireme/buildinfo"
	"github.com/trireme-go/trireme/node"
	"github.com/trireme-go/trireme/testenv"
	"github.com/trireme-go/trireme/testenv/launch"
)

// `trireme version`, `trireme --version`, the daemon's first log line and
// its trireme_build_info gauge all name the build `go version -m` reads
// from the binary: its Go version, vcs.revision and vcs.modified.
func TestVersion(t *testing.T) {
	bin := testenv.Binary(t)
	gm, err := exec.Command("go", "version", "-m", bin).Output()
	if err != nil {
		t.Fatalf("go version -m: %v", err)
	}
	want := buildinfo.Info{Version: "(devel)"}
	for _, line := range strings.Split(string(gm), "\n") {
		f := strings.Fields(line)
		switch {
		case len(f) == 2 && strings.HasSuffix(f[0], ":"):
			want.Go = f[1]
		case len(f) >= 3 && f[0] == "mod" && f[2] != "":
			want.Version = f[2]
		case len(f) == 2 && f[0] == "build":
			k, v, _ := strings.Cut(f[1], "=")
			switch k {
			case "vcs.revision":
				want.Commit = v
			case "vcs.modified":
				want.Modified = v == "true"
			case "vcs.time":
				want.Time = v
			}
		}
	}
	if want.Go == "" {
		t.Fatalf("go version -m: no Go version in\n%s", gm)
	}
	var got buildinfo.Info
	if err := json.Unmarshal([]byte(testenv.RunBin(t, "version", "--json")), &got); err != nil {
		t.Fatal(err)
	}
	if got != want {
		t.Fatalf("trireme version --json = %+v, go version -m says %+v", got, want)
	}
	if out := strings.TrimSpace(testenv.RunBin(t, "version")); out != want.String() {
		t.Errorf("trireme version = %q, want %q", out, want.String())
	}
	if out := strings.TrimSpace(testenv.RunBin(t, "--version")); out != want.String() {
		t.Errorf("trireme --version = %q, want %q", out, want.String())
	}

	// The daemon: its first log line and /metrics.
	n := testenv.NewNode(t, testenv.NodeOptions{})
	dir := t.TempDir()
	pol := filepath.Join(dir, "policy.yaml")
	if err := os.WriteFile(pol, []byte("policies: []\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := &node.Config{Node: "ver-" + n.Suffix, Secrets: node.Secrets{PSKFile: filepath.Join(testenv.PSKDir(t), "psk")}, Policy: pol,
		Socket: filepath.Join(dir, "t.sock"), StateDir: filepath.Join(dir, "state"), FlowLog: filepath.Join(dir, "flows.jsonl"),
		Bridge: node.Bridge{Name: n.Bridge, Subnet: node.Prefix{Prefix: n.Subnet}}}
	d, err := launch.Write(dir, bin, cfg)
	if err != nil {
		t.Fatal(err)
	}
	d.Netns = n.Name
	t.Cleanup(func() {
		d.Kill()
		n.Run(context.Background(), bin, "daemon", "purge", "--config", d.ConfigPath)
	})
	if err := d.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	metrics, err := d.Client().Metrics()
	if err != nil {
		t.Fatal(err)
	}
	gauge := `trireme_build_info{commit="` + want.Commit + `",goversion="` + want.Go + `",modified="` + strconv.FormatBool(want.Modified) +
		`",version="` + want.Version + `"} 1`
	if !strings.Contains(metrics, gauge) {
		t.Errorf("/metrics lacks %s:\n%s", gauge, regexp.MustCompile(`(?m)^trireme_build_info.*$`).FindString(metrics))
	}
	if err := d.Stop(syscall.SIGTERM, 15*time.Second); err != nil {
		t.Fatal(err)
	}
	first, _, _ := strings.Cut(d.Logs(), "\n")
	for _, w := range []string{`msg="trireme daemon"`, "version=" + want.Version, "commit=" + want.Commit, "modified=" + strconv.FormatBool(want.Modified), "go=" + want.Go} {
		if w == "commit=" {
			w = `commit="" `
		}
		if !strings.Contains(first, w) {
			t.Errorf("the daemon's first log line %q lacks %q", first, w)
		}
	}
}
