package main

import (
	"encoding/json"
	"errors"
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
}
