package main

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/google/nftables"

	"github.com/trireme-go/trireme/demo"
	"github.com/trireme-go/trireme/netsetup"
	"github.com/trireme-go/trireme/netsetup/steer"
	"github.com/trireme-go/trireme/testenv"
)

var demoExamples = filepath.Join("..", "..", "examples")

// The offline demo decides every example connection with the policy engine.
func TestOfflineDemo(t *testing.T) {
	out, _, err := runCmd(t, newDemoCmd(), "--offline", "--examples", demoExamples)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range [][]string{
		{"frontend -> web:tcp/80", "ALLOW", "allow web/from-frontend", "allow frontend/to-web"},
		{"frontend -> db:tcp/5432", "DENY", "policy-denied"},
		{"frontend-dev -> web:tcp/80", "REJECT", "reject web/no-dev-clients", "policy-rejected"},
		{"admin -> db:tcp/22", "REJECT", "reject db/never-ssh"},
		{"legacy-vm -> web:tcp/80", "DENY", "missing-token"},
		{"monitor -> db:tcp/5432", "ALLOW", "(bypassed)", "excluded-network"},
	} {
		line := lineStarting(out, want[0]+" ")
		if line == "" {
			t.Errorf("no line for %s in:\n%s", want[0], out)
			continue
		}
		for _, w := range want[1:] {
			if !strings.Contains(line, w) {
				t.Errorf("%s: %q lacks %q", want[0], line, w)
			}
		}
	}
}

// pus.yaml's live connections are checked before anything is created.
func TestParseLiveConn(t *testing.T) {
	hosts := map[string]*demoHost{"a": {Name: "a"}, "b": {Name: "b"}}
	for _, c := range []struct {
		in   string
		want demo.Conn
		err  string
	}{
		{"a -> b:tcp/80", demo.Conn{Client: "a", Server: "b", Proto: "tcp", Port: 80}, ""},
		{" a->b:udp/53 ", demo.Conn{Client: "a", Server: "b", Proto: "udp", Port: 53}, ""},
		{"a b:tcp/80", demo.Conn{}, "want CLIENT -> SERVER:PROTO/PORT"},
		{"a -> b", demo.Conn{}, "want CLIENT -> SERVER:PROTO/PORT"},
		{"a -> b:tcp/80-81", demo.Conn{}, "want one tcp/PORT or udp/PORT"},
		{"a -> b:icmp", demo.Conn{}, "want one tcp/PORT or udp/PORT"},
		{"a -> b:tcp/99999", demo.Conn{}, "want one tcp/PORT or udp/PORT"},
		{"a -> c:tcp/80", demo.Conn{}, `no host "c"`},
		{"a -> a:tcp/80", demo.Conn{}, "connecting to itself"},
	} {
		got, err := parseLiveConn(c.in, hosts)
		if c.err == "" {
			if err != nil || got != c.want {
				t.Errorf("%q: got %+v, %v; want %+v", c.in, got, err, c.want)
			}
		} else if err == nil || !strings.Contains(err.Error(), c.err) {
			t.Errorf("%q: error %v, want one containing %q", c.in, err, c.err)
		}
	}
}

func lineStarting(out, prefix string) string {
	for _, l := range strings.Split(out, "\n") {
		if strings.HasPrefix(l, prefix) {
			return l
		}
	}
	return ""
}

// hostTables lists the nftables tables of the host's own namespace.
func hostTables(t *testing.T) []string {
	t.Helper()
	c, err := nftables.New()
	if err != nil {
		t.Fatal(err)
	}
	ts, err := c.ListTables()
	if err != nil {
		t.Fatal(err)
	}
	var tables []string
	for _, tb := range ts {
		tables = append(tables, tb.Name)
	}
	return tables
}

// demoDecoys makes what another demo, alive beside this test, would have:
// a node namespace, a directory and a daemon process naming it, all under
// this test process's PID (alive, so the demo's CleanStale keeps them). The
// demo under test must neither remove them nor count them as its own.
func demoDecoys(t *testing.T) (check func()) {
	sfx := fmt.Sprintf("%d-%s", os.Getpid(), testenv.Suffix()[:4])
	ns := demo.NamePrefix + sfx + "-node"
	testenv.DecoyNetns(t, ns)
	dir := filepath.Join(os.TempDir(), "trireme-demo-"+sfx)
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	pid := testenv.DecoyProcess(t, "trireme daemon --config "+filepath.Join(dir, "config.yaml"))
	return func() {
		if !netsetup.NetnsExists(ns) {
			t.Errorf("the demo removed another demo's namespace %s", ns)
		}
		if _, err := os.Stat(dir); err != nil {
			t.Errorf("the demo removed another demo's directory: %v", err)
		}
		if syscall.Kill(pid, 0) != nil {
			t.Errorf("the demo killed another demo's daemon (pid %d)", pid)
		}
	}
}

// The live demo: real namespaces, the real daemon in PKI mode, real
// connections; every pair's observed outcome and the flow log's decision,
// and nothing left behind.
func TestLiveDemo(t *testing.T) {
	testenv.RequireRoot(t)
	bin := testenv.Binary(t)
	decoysIntact := demoDecoys(t)
	tablesBefore := hostTables(t)
	results := filepath.Join(t.TempDir(), "rows.json")
	cmd := exec.Command(bin, "demo", "--examples", demoExamples, "--results", results)
	outb, err := cmd.CombinedOutput()
	out := string(outb)
	if err != nil {
		t.Fatalf("demo: %v\n%s", err, out)
	}
	b, err := os.ReadFile(results)
	if err != nil {
		t.Fatal(err)
	}
	var res demoResults
	if err := json.Unmarshal(b, &res); err != nil {
		t.Fatal(err)
	}
	rows := append(append([]demo.Row(nil), res.Live...), res.Run...)
	dockerOK, why := demo.DockerAvailable(bin)
	if dockerOK {
		if res.DockerSkipped != "" || len(res.Docker) == 0 {
			t.Errorf("dockerd is installed, yet the Docker part did not run: %s", res.DockerSkipped)
		}
		rows = append(rows, res.Docker...)
	} else if res.DockerSkipped == "" || !strings.Contains(out, "Docker part skipped: "+why) {
		t.Errorf("no Docker, yet no clear skip message (%q)", res.DockerSkipped)
	}
	type want struct {
		observed, decision, reason, side string
		rules                            []string
		observedRules                    []string
	}
	cases := map[string]want{
		"frontend -> web:tcp/80":          {demo.Connected, "allow", "", "", []string{"web/from-frontend", "frontend/to-web"}, nil},
		"web -> db:tcp/5432":              {demo.Connected, "allow", "", "", []string{"db/from-web", "web/to-db"}, nil},
		"frontend -> db:tcp/5432":         {demo.Refused, "deny", "policy-denied", "server", nil, nil},
		"db -> frontend:tcp/443":          {demo.Refused, "deny", "policy-denied", "client", nil, nil},
		"frontend-dev -> web:tcp/80":      {demo.Refused, "reject", "policy-rejected", "server", []string{"web/no-dev-clients"}, nil},
		"reports -> db:tcp/5432":          {demo.Refused, "deny", "policy-denied", "server", nil, []string{"db/from-reports"}},
		"internet -> frontend:tcp/443":    {demo.Connected, "allow", "", "", []string{"frontend/public-https"}, nil},
		"internet -> db:tcp/5432":         {demo.Refused, "deny", "policy-denied", "server", nil, nil},
		"admin -> web:tcp/22":             {demo.Connected, "allow", "", "", []string{"admin-ssh/ssh-from-admins"}, nil},
		"kiosk -> web:tcp/22":             {demo.Refused, "deny", "policy-denied", "server", nil, nil},
		"admin -> db:tcp/22":              {demo.Refused, "reject", "policy-rejected", "server", []string{"db/never-ssh"}, nil},
		"frontend -> api:tcp/443":         {demo.Connected, "allow", "", "", []string{"external-services/https-apis"}, nil},
		"frontend -> api-blocked:tcp/443": {demo.Refused, "deny", "policy-denied", "client", nil, nil},
		"frontend -> dns:udp/53":          {demo.Connected, "allow", "", "", []string{"external-services/dns"}, nil},
		"legacy-vm -> web:tcp/80":         {demo.Refused, "deny", "missing-token", "server", nil, nil},
		"web -> legacy-vm:tcp/80":         {demo.Refused, "deny", "missing-token", "client", nil, nil},
		"monitor -> db:tcp/5432":          {demo.Connected, "", "", "", nil, nil},
		// trireme run --label app=reports
		"reports (run) -> db:tcp/5432": {demo.Refused, "deny", "policy-denied", "server", nil, []string{"db/from-reports"}},
		"reports (run) -> api:tcp/443": {demo.Connected, "allow", "", "", []string{"external-services/https-apis"}, nil},
		// Docker containers labelled like frontend, web and db
		"c-frontend -> c-web:tcp/80":     {demo.Connected, "allow", "", "", []string{"web/from-frontend", "frontend/to-web"}, nil},
		"c-web -> c-db:tcp/5432":         {demo.Connected, "allow", "", "", []string{"db/from-web", "web/to-db"}, nil},
		"c-frontend -> c-db:tcp/5432":    {demo.Refused, "deny", "policy-denied", "server", nil, nil},
		"c-db -> c-frontend:tcp/443":     {demo.Refused, "deny", "policy-denied", "client", nil, nil},
		"frontend -> c-web:tcp/80":       {demo.Connected, "allow", "", "", []string{"web/from-frontend", "frontend/to-web"}, nil},
		"internet -> c-frontend:tcp/443": {demo.Connected, "allow", "", "", []string{"frontend/public-https"}, nil},
		"internet -> c-db:tcp/5432":      {demo.Refused, "deny", "policy-denied", "server", nil, nil},
	}
	seen := map[string]bool{}
	for _, r := range rows {
		key := r.Conn.Client + " -> " + r.Conn.Server + ":" + r.Conn.Proto + "/" + strconv.Itoa(r.Conn.Port)
		seen[key] = true
		w, ok := cases[key]
		if !ok {
			t.Errorf("unexpected row %s", key)
			continue
		}
		if r.Observed != w.observed || r.Decision != w.decision || r.Reason != w.reason || r.Side != w.side ||
			!slices.Equal(r.Rules, w.rules) || !slices.Equal(r.ObservedRules, w.observedRules) {
			t.Errorf("%s: got observed=%q decision=%q reason=%q side=%q rules=%v observed rules=%v; want %+v",
				key, r.Observed, r.Decision, r.Reason, r.Side, r.Rules, r.ObservedRules, w)
		}
		if r.Observed == demo.Connected && r.Answer != r.Conn.Server {
			t.Errorf("%s: answered by %q", key, r.Answer)
		}
		if w.decision == "" && r.Records != 0 {
			t.Errorf("%s: excluded, yet %d flow records", key, r.Records)
		}
	}
	for k := range cases {
		if strings.Contains(k, "c-") && !dockerOK {
			continue // the Docker part was skipped (checked above)
		}
		if !seen[k] {
			t.Errorf("no row for %s", k)
		}
	}
	for _, s := range []string{"CLIENT -> SERVER:PORT", "frontend -> web:tcp/80", "7 connected, 10 refused.", "$ trireme run --label app=reports", "torn down", "demo finished"} {
		if !strings.Contains(out, s) {
			t.Errorf("output lacks %q:\n%s", s, out)
		}
	}
	if t.Failed() {
		t.Logf("demo output:\n%s", out)
	}

	// Nothing left of this demo (its names carry its PID), whatever else
	// runs on the machine: no namespace (nor one trireme run made), no
	// directory, no process, no nftables table of its node in the host
	// namespace (the demo makes nothing there: its node is a namespace).
	for _, l := range demo.Leftovers(cmd.Process.Pid) {
		t.Errorf("left behind: %s", l)
	}
	for _, tb := range hostTables(t) {
		if !slices.Contains(tablesBefore, tb) && strings.HasPrefix(tb, steer.TablePrefix+demo.NodeName) {
			t.Errorf("nftables table left in the host namespace: %s", tb)
		}
	}
	decoysIntact()
}
