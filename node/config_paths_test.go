package node

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// Every file name in the config is relative to the config file's
// directory, whatever the working directory.
func TestConfigRelativePaths(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, dir, "psk", strings.Repeat("k", 32))
	writeFile(t, dir, "policy.yaml", "policies: []\n")
	writeFile(t, dir, "web.token", strings.Repeat("t", 20))
	cfg := "node: n1\nsecrets: {pskFile: psk}\npolicy: ./policy.yaml\nflowLog: logs/flows.jsonl\nsocket: run/t.sock\n" +
		"stateDir: state\nobserve: {web: {listen: '127.0.0.1:0', tokenFile: web.token}}\n"
	path := writeFile(t, dir, "config.yaml", cfg)
	t.Chdir(t.TempDir()) // another working directory
	c, err := LoadConfig(path)
	if err != nil {
		t.Fatal(err)
	}
	for got, want := range map[string]string{
		c.Secrets.PSKFile: "psk", c.Policy: "policy.yaml", c.FlowLog: "logs/flows.jsonl", c.Socket: "run/t.sock",
		c.StateDir: "state", c.Observe.Web.TokenFile: "web.token",
	} {
		if got != filepath.Join(dir, want) {
			t.Errorf("resolved to %s, want %s", got, filepath.Join(dir, want))
		}
	}

	// A config named by a relative path: relative to its directory too.
	t.Chdir(filepath.Dir(dir))
	c, err = LoadConfig(filepath.Join(filepath.Base(dir), "config.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if c.StateDir != filepath.Join(dir, "state") {
		t.Errorf("stateDir %s, want %s", c.StateDir, filepath.Join(dir, "state"))
	}
}

// A bad or empty file name is refused with the file, line and column of
// its key and the field's name.
func TestConfigBadPaths(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, dir, "psk", strings.Repeat("k", 32))
	writeFile(t, dir, "policy.yaml", "policies: []\n")
	if err := os.Mkdir(filepath.Join(dir, "adir"), 0o700); err != nil {
		t.Fatal(err)
	}
	const head = "node: n1\nsecrets: {pskFile: psk}\npolicy: policy.yaml\n"
	for _, tt := range []struct {
		name, extra string
		want        []string
	}{
		{"empty flowLog", "flowLog: ''\n", []string{"config.yaml:4:10: flowLog: empty"}},
		{"empty socket", "socket:\n", []string{"config.yaml:4:8: socket: empty"}},
		{"blank stateDir", "stateDir: '  '\n", []string{"config.yaml:4:11: stateDir: empty"}},
		{"empty token file", "observe:\n  web:\n    listen: 127.0.0.1:0\n    tokenFile: ''\n", []string{"config.yaml:7:16: observe.web.tokenFile: empty"}},
		{"empty psk file", "", nil}, // head replaced below
		{"socket too long", "socket: " + strings.Repeat("s", 120) + "\n", []string{"config.yaml:4:9: socket:", "longer than a unix socket path"}},
		{"flowLog a directory", "flowLog: adir\n", []string{"config.yaml:4:10: flowLog:", "is a directory"}},
		{"stateDir a file", "stateDir: psk\n", []string{"config.yaml:4:11: stateDir:", "not a directory"}},
		{"policy missing", "", nil},
	} {
		t.Run(tt.name, func(t *testing.T) {
			data := head + tt.extra
			want := tt.want
			switch tt.name {
			case "empty psk file":
				data, want = "node: n1\nsecrets: {pskFile: ''}\npolicy: policy.yaml\n", []string{"config.yaml:2:20: secrets.pskFile: empty"}
			case "policy missing":
				data, want = "node: n1\nsecrets: {pskFile: psk}\npolicy: nope.yaml\n", []string{"config.yaml:3:9: policy:", filepath.Join(dir, "nope.yaml"), "no such file"}
			}
			_, err := ParseConfig(filepath.Join(dir, "config.yaml"), []byte(data))
			if err == nil {
				t.Fatalf("%q: no error", data)
			}
			for _, w := range want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
		})
	}
}
