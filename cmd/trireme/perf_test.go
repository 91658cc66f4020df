package main

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/trireme-go/trireme/perf"
)

func runPerf(t *testing.T, args ...string) (string, error) {
	t.Helper()
	return execCommand(t, newPerfCmd(), args...)
}

// Bad arguments exit with code 2 and say what is wrong, before anything is
// built.
func TestPerfBadArguments(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--variants", "kernel,sidecar"}, `unknown variant "sidecar"`},
		{[]string{"--topology", "three-nodes"}, `unknown topology "three-nodes"`},
		{[]string{"--variants", "kernel", "--rounds", "0"}, "must be positive"},
		{[]string{"--variants", "kernel", "--duration", "-1s"}, "must be positive"},
		{[]string{"--variants", "kernel", "--iperf3", "/nonexistent/iperf3"}, "nonexistent"},
		{[]string{"--rules", "10,1"}, "at least 2"},
		{[]string{"--rules", "10,10"}, "10 twice"},
		{[]string{"--rules", "10", "--variants", "kernel"}, "--variants does not go with it"},
		{[]string{"--flows", "0"}, "want connection counts of at least 1"},
		{[]string{"--scale", "2"}, "want PU counts of at least 3"},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			_, err := runPerf(t, tc.args...)
			var ee *exitError
			if !errors.As(err, &ee) || ee.code != 2 || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want exit code 2 with %q", err, tc.want)
			}
		})
	}
}

// A short kernel-path run prints JSON with every figure.
func TestPerfJSON(t *testing.T) {
	out, err := runPerf(t, "--variants", "kernel", "--rounds", "1", "--duration", "200ms",
		"--clients", "2", "--streams", "2", "--iperf3", "off", "--json")
	if err != nil {
		t.Fatal(err)
	}
	var res perf.Result
	if err := json.Unmarshal([]byte(out), &res); err != nil {
		t.Fatalf("output is not JSON: %v\n%s", err, out)
	}
	if res.Baseline != "kernel" || res.Rounds != 1 || res.Clients != 2 {
		t.Fatalf("result header %+v", res)
	}
	for _, k := range []perf.FigureKey{perf.ConnRate1, perf.ConnRateN, perf.ConnectP50, perf.Bulk1, perf.BulkN, perf.RTTP50} {
		f := res.Figure(k)
		if f == nil || f.Variants["kernel"] == nil || f.Variants["kernel"].Value == nil || f.Variants["kernel"].Value.Median <= 0 {
			t.Errorf("figure %s missing or not positive: %+v", k, f)
		}
	}

	// The saved run read back: its table, and compared with itself.
	dir := t.TempDir()
	saved := filepath.Join(dir, "run.json")
	if err := os.WriteFile(saved, []byte(out), 0o644); err != nil {
		t.Fatal(err)
	}
	table, err := runPerf(t, "show", saved)
	if err != nil || !strings.Contains(table, "trireme perf: one-node, 1 round(s) of 200ms") || !strings.Contains(table, "new conns/s, 1 client ↑") {
		t.Errorf("perf show: %v\n%s", err, table)
	}
	cmp, err := runPerf(t, "compare", "--markdown", saved, saved)
	m := regexp.MustCompile(`\| new conns/s, 1 client ↑ \| ([0-9.]+) conn/s → ([0-9.]+) conn/s \|`).FindStringSubmatch(cmp)
	if err != nil || m == nil || m[1] != m[2] || m[1] == "0" {
		t.Errorf("perf compare of a run with itself: %v\n%s", err, cmp)
	}

	// Files that are not saved comparison runs: usage errors naming them.
	other := filepath.Join(dir, "other.json")
	res.Topology = perf.TwoNodes
	b, _ := json.Marshal(res)
	if err := os.WriteFile(other, b, 0o644); err != nil {
		t.Fatal(err)
	}
	notJSON := filepath.Join(dir, "table.txt")
	if err := os.WriteFile(notJSON, []byte(table), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"show", filepath.Join(dir, "missing.json")}, "no such file"},
		{[]string{"show", notJSON}, notJSON + ": not a trireme perf --json result"},
		{[]string{"compare", saved, other}, "different topologies (one-node, two-nodes)"},
		{[]string{"compare", saved}, "accepts 2 arg(s)"},
	} {
		_, err := runPerf(t, tc.args...)
		var ee *exitError
		if err == nil || !strings.Contains(err.Error(), tc.want) || (errors.As(err, &ee) && ee.code != 2) {
			t.Errorf("perf %v: err = %v, want %q (exit code 2)", tc.args, err, tc.want)
		}
	}
}
