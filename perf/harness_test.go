package perf

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netns"
)

// ourNamespaces lists the perf namespaces this test process owns.
func ourNamespaces(t *testing.T) []string {
	t.Helper()
	ents, err := os.ReadDir("/run/netns")
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	prefix := fmt.Sprintf("%s%dx", nsPrefix, os.Getpid())
	var out []string
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), prefix) {
			out = append(out, e.Name())
		}
	}
	return out
}

// noLeftovers fails the test if a namespace of this process is left, and
// removes it, so that a failing Run leaves nothing behind either.
func noLeftovers(t *testing.T) {
	t.Helper()
	check := func() {
		for _, n := range ourNamespaces(t) {
			t.Errorf("namespace %s left behind", n)
			netns.DeleteNamed(n)
		}
	}
	check()
	t.Cleanup(check)
}

// renamed is the kernel path under another name: a second variant to
// interleave with, whose figures must be comparable to the baseline.
type renamed struct {
	Kernel
	name string
}

func (r renamed) Name() string { return r.name }

// threadNamespaces returns the network namespaces the process's threads
// are in.
func threadNamespaces(t *testing.T) map[string]bool {
	t.Helper()
	tasks, err := os.ReadDir("/proc/self/task")
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]bool{}
	for _, task := range tasks {
		if ns, err := os.Readlink(filepath.Join("/proc/self/task", task.Name(), "ns/net")); err == nil {
			out[ns] = true
		}
	}
	return out
}

func TestRunKernelOneNode(t *testing.T) {
	noLeftovers(t)
	self, err := os.Readlink("/proc/thread-self/ns/net")
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var progress []string
	cfg := Config{
		Topology: OneNode,
		Variants: []Variant{Kernel{}, renamed{name: "kernel2"}},
		Rounds:   2,
		Duration: 500 * time.Millisecond,
		Clients:  4,
		Streams:  2,
		Progress: func(m string) { mu.Lock(); progress = append(progress, m); mu.Unlock() },
	}
	res, err := Run(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	if len(ourNamespaces(t)) != 0 {
		t.Fatalf("namespaces left after Run: %v", ourNamespaces(t))
	}
	// No thread stayed in a topology namespace (it would keep it alive).
	if got := threadNamespaces(t); len(got) != 1 || !got[self] {
		t.Fatalf("threads in namespaces %v after Run, want only %s", got, self)
	}
	for _, n := range res.Notes {
		t.Errorf("note: round %d %s: %s", n.Round, n.Variant, n.Message)
	}

	// Rounds are interleaved: kernel, kernel2, kernel, kernel2.
	var order []string
	for _, m := range progress {
		if f := strings.Fields(m); len(f) >= 3 && f[0] == "round" {
			if len(order) == 0 || order[len(order)-1] != f[1]+" "+f[2] {
				order = append(order, f[1]+" "+f[2])
			}
		}
	}
	if want := []string{"1/2 kernel", "1/2 kernel2", "2/2 kernel", "2/2 kernel2"}; strings.Join(order, ",") != strings.Join(want, ",") {
		t.Fatalf("measurement order %v, want %v", order, want)
	}

	if res.Baseline != "kernel" || len(res.Variants) != 2 {
		t.Fatalf("baseline %q, variants %v", res.Baseline, res.Variants)
	}
	for _, f := range res.Figures {
		for _, v := range res.Variants {
			vf := f.Variants[v]
			if f.Enforcer {
				// The kernel path has no enforcer process.
				if vf.Value != nil {
					t.Errorf("%s %s: %+v without an enforcer", v, f.Key, vf.Value)
				}
				continue
			}
			for r, x := range vf.raw {
				if math.IsNaN(x) || x <= 0 {
					t.Errorf("%s %s round %d: %v", v, f.Key, r+1, x)
				}
			}
			if vf.Value == nil || vf.Value.N != cfg.Rounds || vf.Value.Min > vf.Value.Median || vf.Value.Median > vf.Value.Max {
				t.Errorf("%s %s: summary %+v", v, f.Key, vf.Value)
			}
			if vf.Ratio == nil || vf.Ratio.N != cfg.Rounds || vf.Ratio.Median <= 0 {
				t.Errorf("%s %s: ratio %+v", v, f.Key, vf.Ratio)
			}
			if v == "kernel" && (vf.Ratio.Min != 1 || vf.Ratio.Max != 1) {
				t.Errorf("baseline ratio %+v, want 1", vf.Ratio)
			}
			if f.Delta != (vf.Delta != nil) {
				t.Errorf("%s %s: delta %+v", v, f.Key, vf.Delta)
			}
		}
	}
	for _, v := range res.Variants {
		for _, r := range []int{0, 1} {
			fig := func(k FigureKey) float64 { return res.Figure(k).Variants[v].raw[r] }
			for _, set := range [][]FigureKey{{ConnectP50, ConnectP90, ConnectP99}, {FirstByteP50, FirstByteP90, FirstByteP99}} {
				if !(fig(set[0]) <= fig(set[1]) && fig(set[1]) <= fig(set[2])) {
					t.Errorf("%s round %d: %s %v, %s %v, %s %v not ordered", v, r+1,
						set[0], fig(set[0]), set[1], fig(set[1]), set[2], fig(set[2]))
				}
			}
			if fig(ConnectP50) > fig(FirstByteP50) {
				t.Errorf("%s round %d: connect p50 %v after first byte p50 %v", v, r+1, fig(ConnectP50), fig(FirstByteP50))
			}
		}
	}

	// Both renderings carry every figure.
	var tbl, js bytes.Buffer
	if err := res.WriteTable(&tbl); err != nil {
		t.Fatal(err)
	}
	if err := res.WriteJSON(&js); err != nil {
		t.Fatal(err)
	}
	var back Result
	if err := json.Unmarshal(js.Bytes(), &back); err != nil {
		t.Fatalf("JSON does not read back: %v", err)
	}
	for _, f := range res.Figures {
		if !strings.Contains(tbl.String(), f.Label) {
			t.Errorf("table lacks %q", f.Label)
		}
		b := back.Figure(f.Key)
		if b == nil || len(b.Variants) != 2 {
			t.Errorf("JSON lacks %s", f.Key)
			continue
		}
		if !f.Enforcer && b.Variants["kernel2"].Ratio.Median != f.Variants["kernel2"].Ratio.Median {
			t.Errorf("JSON %s ratio %v, want %v", f.Key, b.Variants["kernel2"].Ratio, f.Variants["kernel2"].Ratio)
		}
	}
}

// The two-node topology routes between the node namespaces. iperf3, an
// optional cross-check, is measured when it is installed.
func TestRunKernelTwoNodes(t *testing.T) {
	noLeftovers(t)
	iperf, _ := exec.LookPath("iperf3")
	res, err := Run(context.Background(), Config{
		Topology: TwoNodes, Variants: []Variant{Kernel{}}, Rounds: 1,
		Duration: 300 * time.Millisecond, Clients: 2, Streams: 2, Iperf3: iperf,
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range res.Notes {
		t.Errorf("note: %s", n.Message)
	}
	keys := []FigureKey{ConnRate1, ConnRateN, Bulk1, BulkN, RTTP50}
	if iperf != "" {
		keys = append(keys, Iperf3Bulk1)
	} else if res.Figure(Iperf3Bulk1) != nil {
		t.Error("an iperf3 figure without iperf3")
	}
	for _, k := range keys {
		if v := res.Figure(k).Variants["kernel"].Value; v == nil || v.Median <= 0 {
			t.Errorf("%s: %+v", k, v)
		}
	}
}

// A Daemon variant runs its binary inside the node namespace with a config
// file, and a daemon that exits or never serves its control API fails the
// run, which then stops the process and removes every namespace.
func TestDaemonVariantFailsCleanly(t *testing.T) {
	for _, tc := range []struct {
		name, tail, want string
	}{
		{"exits at once", "echo bad config >&2\nexit 1\n", "daemon exited: exit status 1"},
		{"never ready", "exec sleep 60\n", "control API not ready"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			noLeftovers(t)
			dir := t.TempDir()
			script := filepath.Join(dir, "fake-trireme")
			// It records its namespace and pid, checks its arguments, then fails.
			body := fmt.Sprintf("#!/bin/sh\n[ \"$1 $2\" = \"daemon --config\" ] && [ -f \"$3\" ] || exit 3\n"+
				"readlink /proc/self/ns/net > %s/ns\necho $$ > %s/pid\n%s", dir, dir, tc.tail)
			if err := os.WriteFile(script, []byte(body), 0o755); err != nil {
				t.Fatal(err)
			}
			var nodeNs string // as readlink shows it
			v := &Daemon{VariantName: "fake", Binary: script, Secrets: PSKSecrets(), StartTimeout: time.Second}
			_, err := Run(context.Background(), Config{
				Variants: []Variant{&probe{Variant: v, seen: func(t *Topology) {
					var st syscall.Stat_t
					if syscall.Stat(filepath.Join("/run/netns", t.Nodes[0].Netns), &st) == nil {
						nodeNs = fmt.Sprintf("net:[%d]", st.Ino)
					}
				}}},
				Rounds: 1, Duration: 100 * time.Millisecond,
			})
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Run: %v, want %q", err, tc.want)
			}
			got, err := os.ReadFile(filepath.Join(dir, "ns"))
			if err != nil {
				t.Fatalf("the fake daemon did not run: %v", err)
			}
			if len(ourNamespaces(t)) != 0 {
				t.Fatalf("namespaces left: %v", ourNamespaces(t))
			}
			if ns := strings.TrimSpace(string(got)); ns != nodeNs {
				t.Fatalf("fake daemon ran in %s, want the node's namespace %s", ns, nodeNs)
			}
			pidb, err := os.ReadFile(filepath.Join(dir, "pid"))
			if err != nil {
				t.Fatal(err)
			}
			var pid int
			fmt.Sscan(string(pidb), &pid)
			if pid <= 0 || syscall.Kill(pid, 0) == nil {
				t.Fatalf("fake daemon %d still running after Run", pid)
			}
		})
	}
}

// probe tells a test which topology a variant was set up on.
type probe struct {
	Variant
	seen func(*Topology)
}

func (p *probe) Setup(ctx context.Context, t *Topology) error {
	p.seen(t)
	return p.Variant.Setup(ctx, t)
}

// selfEnforcer is the kernel path that names the test process (which runs
// the load generator, so it does burn CPU per connection) as its enforcer:
// it exercises the enforcer figures and the profiler without a daemon.
type selfEnforcer struct{ Kernel }

func (selfEnforcer) Name() string        { return "self" }
func (selfEnforcer) EnforcerPIDs() []int { return []int{os.Getpid()} }

func TestEnforcerFiguresAndProfile(t *testing.T) {
	noLeftovers(t)
	dir := t.TempDir()
	_, perfErr := exec.LookPath("perf")
	res, err := Run(context.Background(), Config{
		Variants: []Variant{Kernel{}, selfEnforcer{}}, Rounds: 1, Duration: 300 * time.Millisecond,
		Clients: 2, Streams: 1, ProfileDir: dir,
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range []FigureKey{CPUPer1k, PeakRSS} {
		f := res.Figure(k)
		if v := f.Variants["self"].Value; v == nil || v.Median <= 0 {
			t.Errorf("%s of the self enforcer: %+v", k, v)
		}
		if f.Variants["kernel"].Value != nil || f.Variants["self"].Ratio != nil {
			t.Errorf("%s: a kernel value or a ratio for an enforcer-only figure", k)
		}
	}
	st, err := os.Stat(filepath.Join(dir, "self.perf.data"))
	if perfErr == nil {
		if err != nil || st.Size() == 0 {
			t.Errorf("profile: %v, %v", st, err)
		}
		for _, n := range res.Notes {
			t.Errorf("note: %+v", n)
		}
	} else if len(res.Notes) != 1 || !strings.Contains(res.Notes[0].Message, "perf record") {
		t.Errorf("without perf: notes %+v, want one perf record failure", res.Notes)
	}
	if _, err := os.Stat(filepath.Join(dir, "kernel.perf.data")); err == nil {
		t.Error("a profile of the kernel path, which has no enforcer")
	}
}
