package node

import (
	"errors"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/trireme-go/trireme/dataplane"
)

func writeFile(t *testing.T, dir, name, data string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(data), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestParseByteSize: sizes with and without units; junk is refused.
func TestParseByteSize(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want ByteSize
		ok   bool
	}{
		{"123", 123, true}, {"64KiB", 64 << 10, true}, {"100MiB", 100 << 20, true}, {"1 GiB", 1 << 30, true},
		{"2MB", 2e6, true}, {"7B", 7, true}, {"", 0, false}, {"-1MiB", 0, false}, {"1.5MiB", 0, false},
		{"99999999999GiB", 0, false}, {"MiB", 0, false}, {"10TiB", 0, false},
	} {
		got, err := ParseByteSize(tc.in)
		if (err == nil) != tc.ok || got != tc.want {
			t.Errorf("ParseByteSize(%q) = %d, %v; want %d, ok %v", tc.in, got, err, tc.want, tc.ok)
		}
	}
}

func TestConfig(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, dir, "psk", strings.Repeat("k", 32))
	writeFile(t, dir, "policy.yaml", "policies: []\n")
	writeFile(t, dir, "ca.pem", "x")
	writeFile(t, dir, "node.pem", "x")
	writeFile(t, dir, "node.key", "x")
	writeFile(t, dir, "ca.key", "x")
	writeFile(t, dir, "kubeconfig", "x")

	tests := []struct {
		name    string
		config  string
		wantErr []string // substrings, all must appear
	}{
		{name: "minimal psk", config: "node: n1\nsecrets: {pskFile: psk}\npolicy: policy.yaml\n"},
		{name: "pki", config: "node: n1\nsecrets: {caCert: ca.pem, nodeCert: node.pem, nodeKey: node.key}\npolicy: policy.yaml\n"},
		{name: "kubernetes", config: "node: n1\nsecrets: {pskFile: psk}\nkubernetes: {enabled: true, kubeconfig: kubeconfig, podNetworks: [10.244.0.0/16]}\n"},
		{name: "kubernetes in-cluster", config: "node: n1\nsecrets: {pskFile: psk}\nkubernetes: {enabled: true}\n"},
		{name: "pki ca key", config: "node: n1\nsecrets: {caCert: ca.pem, caKey: ca.key}\npolicy: policy.yaml\n"},
		{name: "kubernetes and policy", config: "node: n1\nsecrets: {pskFile: psk}\npolicy: policy.yaml\nkubernetes: {enabled: true}\n", wantErr: []string{"policy:", "not both"}},
		{name: "kubernetes settings off", config: "node: n1\nsecrets: {pskFile: psk}\npolicy: policy.yaml\nkubernetes: {nodeName: x}\n", wantErr: []string{"kubernetes: settings given"}},
		{name: "kubernetes bad", config: "node: n1\nsecrets: {pskFile: psk}\nkubernetes: {enabled: true, kubeconfig: nope, netnsDir: rel}\n", wantErr: []string{"kubernetes.kubeconfig", "no such file"}},
		{name: "kubernetes relative netns", config: "node: n1\nsecrets: {pskFile: psk}\nkubernetes: {enabled: true, netnsDir: rel}\n", wantErr: []string{"kubernetes.netnsDir", "absolute"}},
		{name: "kubernetes bad cidr", config: "node: n1\nsecrets: {pskFile: psk}\nkubernetes:\n  enabled: true\n  podNetworks: [10.0.0.0/40]\n", wantErr: []string{"line 5"}},
		{name: "ca key and node cert", config: "node: n1\nsecrets: {caCert: ca.pem, caKey: ca.key, nodeCert: node.pem}\npolicy: policy.yaml\n", wantErr: []string{"caKey", "not both"}},
		{name: "ca key without ca", config: "node: n1\nsecrets: {caKey: ca.key}\npolicy: policy.yaml\n", wantErr: []string{"secrets.caCert: missing"}},
		{name: "no secrets", config: "node: n1\npolicy: policy.yaml\n", wantErr: []string{"secrets: missing"}},
		{name: "both kinds", config: "node: n1\nsecrets: {pskFile: psk, caCert: ca.pem}\npolicy: policy.yaml\n", wantErr: []string{"not both"}},
		{name: "pki incomplete", config: "node: n1\nsecrets: {caCert: ca.pem}\npolicy: policy.yaml\n", wantErr: []string{"secrets.nodeCert: missing", "secrets.nodeKey: missing"}},
		{name: "missing file", config: "node: n1\nsecrets: {pskFile: nope}\npolicy: policy.yaml\n", wantErr: []string{"secrets.pskFile", "no such file"}},
		{name: "no policy", config: "node: n1\nsecrets: {pskFile: psk}\n", wantErr: []string{"policy: missing"}},
		{name: "unknown key", config: "node: n1\nsecret: {}\n", wantErr: []string{"line 2", "secret"}},
		{name: "bad values", config: "node: Bad_Name\nsecrets: {pskFile: psk}\npolicy: policy.yaml\nmidStream: maybe\nonPolicyChange: later\nbridge: {name: waytoolongbridgename, subnet: 10.0.0.0/31}\ntokenRefresh: 1s\nsocket: ''\nkernelTCPTimeout: 3h\nmaxProcs: -1\n",
			wantErr: []string{"node:", "midStream:", "onPolicyChange:", "bridge.name:", "bridge.subnet:", "config.yaml:7:15: tokenRefresh:", "config.yaml:8:9: socket: empty", "config.yaml:9:19: kernelTCPTimeout:", "config.yaml:10:11: maxProcs: -1: want 0"}},
		{name: "bad cidr", config: "node: n1\nsecrets: {pskFile: psk}\npolicy: policy.yaml\ntargetNetworks: [10.0.0.0/33]\n", wantErr: []string{"line 4"}},
		{name: "flow log bounds", config: "node: n1\nsecrets: {pskFile: psk}\npolicy: policy.yaml\nflowLogMaxSize: 1KiB\nflowLogFiles: -1\nflowLogAggregate: 10ms\n",
			wantErr: []string{"flowLogMaxSize:", "flowLogFiles:", "flowLogAggregate:"}},
		{name: "flow log size unit", config: "node: n1\nsecrets: {pskFile: psk}\npolicy: policy.yaml\nflowLogMaxSize: 12 parsecs\n", wantErr: []string{"line 4", "not a size"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := writeFile(t, dir, "config.yaml", tt.config)
			c, err := LoadConfig(path)
			if len(tt.wantErr) == 0 {
				if err != nil {
					t.Fatalf("unexpected error: %v", err)
				}
				if c.Socket != DefaultSocket || c.Bridge.Name != DefaultBridge || c.MidStream.MidStream != dataplane.MidStreamDrop || c.OnPolicyChange != PolicyChangeKeep || c.TokenRefresh != DefaultRefresh || c.KernelTCPTimeout != DefaultKernelTCPTimeout {
					t.Errorf("defaults not applied: %+v", c)
				}
				if fl := c.flowLog(); fl.MaxSize != int64(DefaultFlowLogMaxSize) || fl.Files != DefaultFlowLogFiles || fl.Aggregate != DefaultFlowLogAggregate {
					t.Errorf("flow log defaults not applied: %+v", fl)
				}
				if c.Policy == "" && !c.Kubernetes.Enabled || c.Policy != "" && !filepath.IsAbs(c.Policy) {
					t.Errorf("policy path not resolved: %s", c.Policy)
				}
				return
			}
			if err == nil {
				t.Fatal("want an error")
			}
			for _, w := range tt.wantErr {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
			if !strings.Contains(err.Error(), path) {
				t.Errorf("error %q does not name the file", err)
			}
		})
	}
}

// memController is an in-memory Controller: it tests the HTTP layer, not the
// daemon (the daemon's own tests drive this API against real namespaces).
type memController struct {
	mu       sync.Mutex
	pus      map[string]PUInfo
	excluded []netip.Prefix
}

func (m *memController) ListPUs() []PUInfo {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []PUInfo
	for _, p := range m.pus {
		out = append(out, p)
	}
	return out
}

func (m *memController) AttachPU(r AttachRequest) (PUInfo, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if strings.Contains(r.NetNS, "/") && !strings.HasPrefix(r.NetNS, "/") {
		return PUInfo{}, errors.Join(ErrInvalid, errors.New("bad netns"))
	}
	p := PUInfo{ID: "pu-" + r.NetNS, Name: r.Name, Kind: "netns", NetNS: r.NetNS, Tags: r.Labels, State: PURunning, Created: time.Now()}
	m.pus[p.ID] = p
	return p, nil
}

func (m *memController) CreatePU(r CreateRequest) (PUInfo, error) {
	return m.AttachPU(AttachRequest{NetNS: r.Name, Name: r.Name, Labels: r.Labels})
}

func (m *memController) DetachPU(id string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, ok := m.pus[id]; !ok {
		return ErrNotFound
	}
	delete(m.pus, id)
	return nil
}

func (m *memController) AddExcluded(p netip.Prefix) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.excluded = append(m.excluded, p)
	return nil
}

func (m *memController) RemoveExcluded(p netip.Prefix) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	for i, q := range m.excluded {
		if q == p {
			m.excluded = append(m.excluded[:i], m.excluded[i+1:]...)
			return nil
		}
	}
	return ErrNotFound
}

func (m *memController) Stats() Stats {
	m.mu.Lock()
	defer m.mu.Unlock()
	return Stats{Node: "n1", PUs: len(m.pus), Excluded: append([]netip.Prefix(nil), m.excluded...)}
}

func TestControlAPI(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "run", "t.sock")
	ctl := &memController{pus: map[string]PUInfo{}}
	srv, err := Serve(sock, ctl)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })

	st, err := os.Stat(sock)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Errorf("socket mode %v, want 0600", st.Mode().Perm())
	}

	c := NewClient(sock)
	p, err := c.AttachPU(AttachRequest{NetNS: "web1", Labels: map[string]string{"app": "web"}})
	if err != nil {
		t.Fatal(err)
	}
	if p.ID != "pu-web1" || p.Tags["app"] != "web" {
		t.Errorf("attach returned %+v", p)
	}
	pus, err := c.ListPUs()
	if err != nil || len(pus) != 1 {
		t.Fatalf("list: %v %v", pus, err)
	}
	if err := c.DetachPU("nope"); err == nil {
		t.Error("detach of unknown PU succeeded")
	} else if ae := (*APIError)(nil); !errors.As(err, &ae) || ae.Status != http.StatusNotFound {
		t.Errorf("detach unknown: %v, want 404", err)
	}
	if err := c.DetachPU(p.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := c.AttachPU(AttachRequest{}); err == nil || !strings.Contains(err.Error(), "netns is required") {
		t.Errorf("attach without netns: %v", err)
	}

	pfx := netip.MustParsePrefix("10.1.2.3/32")
	if err := c.AddExcluded(pfx); err != nil {
		t.Fatal(err)
	}
	s, err := c.Stats()
	if err != nil || len(s.Excluded) != 1 || s.Excluded[0] != pfx {
		t.Fatalf("stats after exclude add: %+v %v", s, err)
	}
	if err := c.RemoveExcluded(pfx); err != nil {
		t.Fatal(err)
	}
	v6 := netip.MustParsePrefix("fd00::/64")
	if err := c.AddExcluded(v6); err != nil {
		t.Fatal(err)
	}
	if err := c.RemoveExcluded(v6); err != nil {
		t.Fatalf("remove v6 prefix (slash in path): %v", err)
	}

	// Prometheus metrics on the same socket.
	m, err := c.Metrics()
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"trireme_pus 0\n", "trireme_policy_file_valid 1\n", "go_goroutines "} {
		if !strings.Contains(m, want) {
			t.Errorf("metrics lack %q", want)
		}
	}

	// Hostile bodies get 400 with a message, never a crash.
	hc := c.hc
	for _, body := range []string{"", "{", `{"netns": 5}`, `{"netns":"a","bogus":1}`, `{"netns":"a"} {}`, strings.Repeat("[", 2<<20)} {
		resp, err := hc.Post("http://trireme/v1/pus", "application/json", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusBadRequest {
			t.Errorf("body %.20q: status %d, want 400", body, resp.StatusCode)
		}
	}
	resp, err := hc.Post("http://trireme/v1/excluded", "application/json", strings.NewReader(`{"prefix":"not-an-ip"}`))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadRequest {
		t.Errorf("bad prefix: status %d", resp.StatusCode)
	}
}

func TestServeSocketReuse(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "t.sock")
	srv, err := Serve(sock, &memController{pus: map[string]PUInfo{}})
	if err != nil {
		t.Fatal(err)
	}
	// A live daemon's socket is not stolen.
	if _, err := Serve(sock, &memController{}); err == nil || !strings.Contains(err.Error(), "another daemon") {
		t.Fatalf("second Serve on a live socket: %v", err)
	}
	srv.Close()
	if _, err := os.Stat(sock); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("socket left after Close: %v", err)
	}
	// A stale socket (a crashed daemon's file, nobody listening) is replaced.
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	l.(*net.UnixListener).SetUnlinkOnClose(false)
	l.Close()
	srv2, err := Serve(sock, &memController{pus: map[string]PUInfo{}})
	if err != nil {
		t.Fatalf("Serve over a stale socket: %v", err)
	}
	srv2.Close()
	// A regular file is not removed.
	f := writeFile(t, t.TempDir(), "file.sock", "x")
	if _, err := Serve(f, &memController{}); err == nil {
		t.Error("Serve over a regular file succeeded")
	}
}

// TestExampleConfig: examples/daemon.yaml is a valid configuration.
func TestExampleConfig(t *testing.T) {
	data, err := os.ReadFile("../examples/daemon.yaml")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	for _, f := range []string{"policy.yaml", "pki/node-1/ca.crt", "pki/node-1/node.crt", "pki/node-1/node.key"} {
		if err := os.MkdirAll(filepath.Dir(filepath.Join(dir, f)), 0o700); err != nil {
			t.Fatal(err)
		}
		writeFile(t, dir, f, "x")
	}
	c, err := ParseConfig(filepath.Join(dir, "daemon.yaml"), data)
	if err != nil {
		t.Fatal(err)
	}
	if !c.Secrets.PKI() || !c.Docker.Enabled || c.TokenRefresh != 5*time.Minute || c.Bridge.Name != "trireme0" ||
		len(c.TargetNetworks) != 1 || c.Policy != filepath.Join(dir, "policy.yaml") {
		t.Errorf("example config read as %+v", c)
	}
}

// FuzzParseByteSize: any string is a size or an error, never a panic or a
// negative size.
func FuzzParseByteSize(f *testing.F) {
	for _, s := range []string{"100MiB", "1 GiB", "7B", "-1", "9223372036854775807GB"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if v, err := ParseByteSize(s); err == nil && v < 0 {
			t.Fatalf("ParseByteSize(%q) = %d", s, v)
		}
	})
}

// TestProcs: the daemon's GOMAXPROCS from maxProcs, the environment
// variable and Go's default.
func TestProcs(t *testing.T) {
	for _, c := range []struct {
		maxProcs, goDefault int
		env                 string
		want                int
	}{
		{0, 2, "", 1},   // a 2-CPU node (or a container limited to 2): one processor
		{0, 1, "", 1},   // one CPU
		{0, 8, "", 8},   // larger nodes: Go's default
		{0, 2, "2", 2},  // GOMAXPROCS set: as Go applied it
		{0, 4, "4", 4},  // likewise
		{3, 2, "", 3},   // maxProcs wins over everything
		{1, 16, "8", 1}, // likewise
	} {
		cfg := Config{MaxProcs: c.maxProcs}
		if got := cfg.Procs(c.goDefault, c.env); got != c.want {
			t.Errorf("maxProcs %d, Go's default %d, GOMAXPROCS %q: %d, want %d", c.maxProcs, c.goDefault, c.env, got, c.want)
		}
	}
}
