package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"path/filepath"
	"strings"
	"testing"

	"github.com/trireme-go/trireme/ipproto"
	"github.com/trireme-go/trireme/k8s"
	"github.com/trireme-go/trireme/policy"
)

func runK8s(t *testing.T, args ...string) (string, error) {
	t.Helper()
	var out bytes.Buffer
	cmd := newK8sCmd()
	cmd.SilenceUsage, cmd.SilenceErrors = true, true
	cmd.SetOut(&out)
	cmd.SetErr(&out)
	cmd.SetArgs(args[1:]) // without "k8s"
	err := cmd.Execute()
	return out.String(), err
}

var exampleDir = filepath.Join("..", "..", "examples", "k8s")

// translate prints a policy file that parses back and decides like the
// translation itself.
func TestK8sTranslateRoundTrip(t *testing.T) {
	out, err := runK8s(t, "k8s", "translate", exampleDir)
	if err != nil {
		t.Fatal(err)
	}
	set, err := policy.Parse("printed.yaml", []byte(out))
	if err != nil {
		t.Fatalf("printed policy does not parse: %v\n%s", err, out)
	}
	printed, err := policy.Compile(set)
	if err != nil {
		t.Fatal(err)
	}
	c, err := k8s.Load(exampleDir)
	if err != nil {
		t.Fatal(err)
	}
	tr, err := k8s.Translate(c, k8s.Options{})
	if err != nil {
		t.Fatal(err)
	}
	direct, err := policy.Compile(tr.Set)
	if err != nil {
		t.Fatal(err)
	}
	for _, pr := range []policy.PortRange{{Protocol: ipproto.TCP, First: 8080}, {Protocol: ipproto.TCP, First: 5432},
		{Protocol: ipproto.UDP, First: 53}, {Protocol: ipproto.TCP, First: 9187}} {
		a, b := k8s.Reach(direct, tr.PUs, pr.Protocol, pr.First), k8s.Reach(printed, tr.PUs, pr.Protocol, pr.First)
		allowed := 0
		for i := range a.Cells {
			for j := range a.Cells[i] {
				if a.Cells[i][j].Allowed() {
					allowed++
				}
				if a.Cells[i][j].Allowed() != b.Cells[i][j].Allowed() {
					t.Errorf("%v %s -> %s: translated %v, printed %v", pr, tr.PUs[i].ID(), tr.PUs[j].ID(), a.Cells[i][j].Allowed(), b.Cells[i][j].Allowed())
				}
			}
		}
		if allowed == 0 || allowed == len(tr.PUs)*len(tr.PUs) {
			t.Errorf("%v: %d cells allowed: the example should allow some and deny some", pr, allowed)
		}
	}
}

func TestK8sReach(t *testing.T) {
	out, err := runK8s(t, "k8s", "reach", exampleDir, "--port", "tcp/5432", "--json")
	if err != nil {
		t.Fatal(err)
	}
	var got []reachJSON
	if err := json.Unmarshal([]byte(out), &got); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if len(got) != 1 || got[0].Port != "tcp/5432" {
		t.Fatalf("got %+v", got)
	}
	// Only the API reaches the database on 5432.
	var reach []string
	for i, row := range got[0].Reachable {
		for j, ok := range row {
			if ok && strings.HasPrefix(got[0].Pods[j], "shop/postgres") {
				reach = append(reach, got[0].Pods[i])
			}
		}
	}
	if strings.Join(reach, ",") != "shop/api-5c6b7" {
		t.Errorf("reach shop/postgres-0 on tcp/5432: %v, want only shop/api-5c6b7", reach)
	}

	out, err = runK8s(t, "k8s", "reach", exampleDir, "--port", "udp/53")
	if err != nil {
		t.Fatal(err)
	}
	// Row of the API: DNS (column 1) allowed, Prometheus denied by the API's egress.
	found := false
	for _, line := range strings.Split(out, "\n") {
		if f := strings.Fields(line); len(f) == 8 && f[1] == "shop/api-5c6b7" {
			found = true
			if got := strings.Join(f[2:], " "); got != ". E X X X X" {
				t.Errorf("row of shop/api-5c6b7: %q, want \". E X X X X\"\n%s", got, out)
			}
		}
	}
	if !found {
		t.Errorf("no row for shop/api-5c6b7:\n%s", out)
	}
}

func TestK8sErrors(t *testing.T) {
	for _, args := range [][]string{
		{"k8s", "reach", exampleDir, "--port", "tcp/1-9"},
		{"k8s", "reach", exampleDir, "--port", "tcp"},
		{"k8s", "translate", filepath.Join(exampleDir, "nonexistent")},
		{"k8s", "translate", exampleDir, "--target-network", "10.0.0.1/8"},
	} {
		_, err := runK8s(t, args...)
		var ee *exitError
		if !errors.As(err, &ee) || ee.code != 1 {
			t.Errorf("%v: got %v, want exit code 1", args, err)
		}
	}
}

// A named port resolves on each server: "metrics" is 9090 on the API and the
// gateway, 9187 on the database's exporter, and absent elsewhere (Prometheus
// names its port "web").
func TestK8sReachNamedPort(t *testing.T) {
	out, err := runK8s(t, "k8s", "reach", exampleDir, "--port", "tcp/metrics")
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{
		"monitoring/prometheus-0": "- - . . - .", // scrapes gateway, api and db
		"shop/api-5c6b7":          "- - X X - X", // isolated both ways
	}
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) != 8 {
			continue
		}
		if w, ok := want[f[1]]; ok {
			if got := strings.Join(f[2:], " "); got != w {
				t.Errorf("row %s: %q, want %q\n%s", f[1], got, w, out)
			}
			delete(want, f[1])
		}
	}
	if len(want) > 0 {
		t.Errorf("rows missing: %v\n%s", want, out)
	}
	if _, err := runK8s(t, "k8s", "reach", exampleDir, "--port", "tcp/Bad_Name"); err == nil {
		t.Error("a bad port name was accepted")
	}
}
