package node_test

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/trireme-go/trireme/node"
	"github.com/trireme-go/trireme/testenv"
)

// flowScene is a live daemon with four PUs around a web server: a frontend
// the policy allows, a dev client whose connections the web's ingress
// rejects (rule no-dev-clients), a rogue client no ingress rule admits
// (denied by default), and the web server itself (ports 8080 and 9090: the
// frontend's egress allows only 8080).
type flowScene struct {
	d                          *testenv.Daemon
	front, web, dev, rogue     *testenv.PU
	frontN, webN, devN, rogueN string // PU names
}

const flowScenePolicy = `
targetNetworks: [%s]
policies:
  - name: frontend
    selector: app=frontend
    egress:
      - name: to-web
        to: [{selector: app=web}]
        ports: [tcp/8080]
        action: allow
  - name: web
    selector: app=web
    ingress:
      - name: from-frontend
        from: [{selector: app=frontend}]
        ports: [tcp/8080, tcp/9090]
        action: allow
      - name: no-dev-clients
        from: [{selector: env=dev}]
        action: reject
  - name: clients
    selector: app in (dev, rogue)
    egress:
      - name: anything-web
        to: [{selector: app=web}]
        action: allow
`

func newFlowScene(t *testing.T, extra string) *flowScene {
	testenv.RequireRoot(t)
	n := testenv.NewNode(t, testenv.NodeOptions{PUs: 4})
	d := testenv.NewDaemon(t, n, testenv.DaemonOptions{SecretsDir: testenv.PSKDir(t),
		Policy: fmt.Sprintf(flowScenePolicy, n.Subnet), Extra: extra})
	d.Start()
	s := &flowScene{d: d, front: n.PUs[0], web: n.PUs[1], dev: n.PUs[2], rogue: n.PUs[3]}
	d.Attach(s.front, "app=frontend")
	d.Attach(s.web, "app=web")
	d.Attach(s.dev, "app=dev", "env=dev")
	d.Attach(s.rogue, "app=rogue")
	pus, err := d.Client().ListPUs()
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range pus {
		switch {
		case slices.Contains(p.IPs, s.front.Addr):
			s.frontN = p.Name
		case slices.Contains(p.IPs, s.web.Addr):
			s.webN = p.Name
		case slices.Contains(p.IPs, s.dev.Addr):
			s.devN = p.Name
		case slices.Contains(p.IPs, s.rogue.Addr):
			s.rogueN = p.Name
		}
	}
	if s.frontN == "" || s.webN == "" || s.devN == "" || s.rogueN == "" {
		t.Fatalf("PUs not all listed: %+v", pus)
	}
	s.web.ServeEcho(8080)
	s.web.ServeEcho(9090) // the web admits the frontend there, the frontend's egress does not
	return s
}

// connect makes one connection of each kind: allowed, rejected, denied.
func (s *flowScene) connect(t *testing.T) {
	t.Helper()
	srv := netip.AddrPortFrom(s.web.Addr, 8080)
	if err := s.front.Echo(srv, "hello", 5*time.Second); err != nil {
		t.Fatalf("frontend -> web: %v", err)
	}
	if err := s.dev.Echo(srv, "hello", 3*time.Second); err == nil {
		t.Fatal("dev -> web: the connection worked; the policy rejects it")
	}
	if err := s.rogue.Echo(srv, "hello", time.Second); err == nil {
		t.Fatal("rogue -> web: the connection worked; the policy denies it")
	}
}

// flows runs `trireme flows --json ARGS` and returns the records.
func (s *flowScene) flows(t *testing.T, args ...string) []node.Flow {
	t.Helper()
	out := testenv.RunBin(t, append([]string{"flows", "--socket", s.d.Socket, "--json"}, args...)...)
	var fs []node.Flow
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		if line == "" {
			continue
		}
		var f node.Flow
		if err := json.Unmarshal([]byte(line), &f); err != nil {
			t.Fatalf("flows %v: line %q: %v", args, line, err)
		}
		fs = append(fs, f)
	}
	return fs
}

// waitFlows polls `trireme flows ARGS` until ok accepts the records.
func (s *flowScene) waitFlows(t *testing.T, ok func([]node.Flow) bool, args ...string) []node.Flow {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		fs := s.flows(t, args...)
		if ok(fs) {
			return fs
		}
		if time.Now().After(deadline) {
			t.Fatalf("flows %v: %d records, not the ones expected:\n%s", args, len(fs), dumpFlows(fs))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func dumpFlows(fs []node.Flow) string {
	var b strings.Builder
	for _, f := range fs {
		rule := "-"
		if f.Rule != nil {
			rule = f.Rule.Name
		}
		fmt.Fprintf(&b, "  #%d %s %s %v -> %v %s reason=%q rule=%s end=%s\n", f.Seq, f.LocalName, f.Direction, f.Client, f.Server, f.Verdict, f.Reason, rule, f.End)
	}
	return b.String()
}

// hasVerdicts: the records include one of each verdict wanted.
func hasVerdicts(want ...string) func([]node.Flow) bool {
	return func(fs []node.Flow) bool {
		for _, w := range want {
			if !slices.ContainsFunc(fs, func(f node.Flow) bool { return f.Verdict == w }) {
				return false
			}
		}
		return true
	}
}

// TestFlowsQuery: `trireme flows` against a live daemon: the web server's
// ingress records of an allowed, a rejected and a denied connection carry
// the right verdict, rule, reason and names, and each filter keeps exactly
// the records it names.
func TestFlowsQuery(t *testing.T) {
	s := newFlowScene(t, "")
	s.connect(t)
	// The scene's own TCP connections (the node's IGMP queries to the PUs
	// are denied too, and recorded: not this test's).
	ingress := s.waitFlows(t, hasVerdicts("allowed", "rejected", "denied"), "--pu", s.webN, "--direction", "ingress", "--proto", "tcp")
	for _, f := range ingress {
		if f.LocalName != s.webN || f.Direction != "ingress" || f.Server.Addr() != s.web.Addr || f.Server.Port() != 8080 {
			t.Errorf("--pu %s --direction ingress gave a record of another PU or direction:\n%s", s.webN, dumpFlows([]node.Flow{f}))
		}
		switch f.Client.Addr() {
		case s.front.Addr:
			if f.Verdict != "allowed" || f.Rule == nil || f.Rule.Name != "from-frontend" || f.Reason != "none" || f.RemoteName != s.frontN {
				t.Errorf("frontend -> web: %s", dumpFlows([]node.Flow{f}))
			}
			if !slices.Contains(f.Remote.Tags, "app=frontend") || f.Remote.External {
				t.Errorf("frontend -> web: peer tags %v external %v", f.Remote.Tags, f.Remote.External)
			}
		case s.dev.Addr:
			if f.Verdict != "rejected" || f.Rule == nil || f.Rule.Name != "no-dev-clients" || f.Reason != "policy-rejected" {
				t.Errorf("dev -> web: %s", dumpFlows([]node.Flow{f}))
			}
		case s.rogue.Addr:
			if f.Verdict != "denied" || f.Rule != nil || f.Reason != "policy-denied" || f.RemoteName != s.rogueN {
				t.Errorf("rogue -> web: %s", dumpFlows([]node.Flow{f}))
			}
		default:
			t.Errorf("a record of an unknown client: %s", dumpFlows([]node.Flow{f}))
		}
	}

	all := s.flows(t)
	for _, tc := range []struct {
		name string
		args []string
		keep func(node.Flow) bool
	}{
		{"verdict", []string{"--verdict", "denied"}, func(f node.Flow) bool { return f.Verdict == "denied" }},
		{"verdicts", []string{"--verdict", "denied", "--verdict", "rejected"}, func(f node.Flow) bool { return f.Verdict == "denied" || f.Verdict == "rejected" }},
		{"rule name", []string{"--rule", "no-dev-clients"}, func(f node.Flow) bool { return f.Rule != nil && f.Rule.Name == "no-dev-clients" }},
		{"rule policy", []string{"--rule", "frontend"}, func(f node.Flow) bool { return f.Rule != nil && f.Rule.Policy == "frontend" }},
		{"rule index", []string{"--rule", "web/ingress/0"}, func(f node.Flow) bool { return f.Rule != nil && f.Rule.Policy == "web" && f.Rule.Index == 0 }},
		{"peer ip", []string{"--peer", s.front.Addr.String()}, func(f node.Flow) bool { return f.Remote.IP == s.front.Addr }},
		{"peer cidr", []string{"--peer", s.d.Node.Subnet.String()}, func(f node.Flow) bool { return s.d.Node.Subnet.Contains(f.Remote.IP) }},
		{"peer selector", []string{"--peer-selector", "env=dev"}, func(f node.Flow) bool { return slices.Contains(f.Remote.Tags, "env=dev") }},
		{"pu selector", []string{"--pu-selector", "app in (dev,rogue)"}, func(f node.Flow) bool { return f.LocalName == s.devN || f.LocalName == s.rogueN }},
		{"pu id", []string{"--pu", all[0].Local.ID}, func(f node.Flow) bool { return f.Local.ID == all[0].Local.ID }},
		{"egress", []string{"--direction", "egress"}, func(f node.Flow) bool { return f.Direction == "egress" }},
		{"port", []string{"--port", "8000-8100", "--proto", "tcp"}, func(f node.Flow) bool { return f.Server.Port() == 8080 }},
		{"other port", []string{"--port", "9090"}, func(node.Flow) bool { return false }},
		{"other proto", []string{"--proto", "udp"}, func(node.Flow) bool { return false }},
		{"reason", []string{"--reason", "policy-denied"}, func(f node.Flow) bool { return f.Reason == "policy-denied" }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := s.flows(t, tc.args...)
			// The ring only grows during the test: every record of the
			// earlier answer that the filter keeps must be there, and
			// nothing it does not keep.
			for _, f := range got {
				if !tc.keep(f) {
					t.Errorf("%v kept %s", tc.args, dumpFlows([]node.Flow{f}))
				}
			}
			for _, f := range all {
				if tc.keep(f) && !slices.ContainsFunc(got, func(g node.Flow) bool { return g.Seq == f.Seq }) {
					t.Errorf("%v left out %s", tc.args, dumpFlows([]node.Flow{f}))
				}
			}
		})
	}
	for _, want := range []string{"denied", "rejected", "allowed"} {
		if !slices.ContainsFunc(all, func(f node.Flow) bool { return f.Verdict == want }) {
			t.Errorf("no %s record in the ring:\n%s", want, dumpFlows(all))
		}
	}

	// --last N: the newest N that match.
	last := s.flows(t, "--last", "2")
	if len(last) != 2 || last[1].Seq < all[len(all)-1].Seq || last[0].Seq >= last[1].Seq {
		t.Errorf("--last 2 gave:\n%s\nof:\n%s", dumpFlows(last), dumpFlows(all))
	}
	// --since in the future: nothing.
	if fs := s.flows(t, "--since", time.Now().Add(time.Hour).Format(time.RFC3339)); len(fs) != 0 {
		t.Errorf("--since an hour ahead gave %d records", len(fs))
	}
	if fs := s.flows(t, "--since", "1h"); len(fs) < len(all) {
		t.Errorf("--since 1h gave %d records, the ring holds %d", len(fs), len(all))
	}

	// The table: a header, the names, the rule and reason that decided.
	table := testenv.RunBin(t, "flows", "--socket", s.d.Socket, "--pu", s.webN)
	for _, want := range []string{"VERDICT", "REASON", "RULE", s.webN, s.frontN, "web/ingress/0 (from-frontend)", "no-dev-clients", "policy-denied", "tcp/8080"} {
		if !strings.Contains(table, want) {
			t.Errorf("the table lacks %q:\n%s", want, table)
		}
	}
	if strings.Contains(table, "CLIENT") {
		t.Errorf("the default table has the wide columns:\n%s", table)
	}
	wide := testenv.RunBin(t, "flows", "--socket", s.d.Socket, "-o", "wide", "--pu", s.webN)
	for _, want := range []string{"CLIENT", "PEER-TAGS", "app=frontend", s.front.Addr.String() + ":"} {
		if !strings.Contains(wide, want) {
			t.Errorf("-o wide lacks %q:\n%s", want, wide)
		}
	}
}

// TestFlowsFollow: `trireme flows -f` prints a denied connection made after
// it started, and only what its filters select.
func TestFlowsFollow(t *testing.T) {
	s := newFlowScene(t, "")
	s.connect(t) // records before the follower starts, which --since 0s leaves out
	s.waitFlows(t, hasVerdicts("denied"), "--pu", s.webN)

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	cmd := exec.CommandContext(ctx, testenv.Binary(t), "flows", "--socket", s.d.Socket, "-f", "--json",
		"--since", "0s", "--pu", s.webN, "--verdict", "denied", "--proto", "tcp")
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cancel(); cmd.Wait() })
	lines := make(chan string)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	// The follower is connected once it answers nothing for the past: make
	// new connections until one shows (the first may precede the
	// follower's request).
	srv := netip.AddrPortFrom(s.web.Addr, 8080)
	deadline := time.Now().Add(15 * time.Second)
	for {
		if err := s.front.Echo(srv, "ok", 5*time.Second); err != nil { // allowed: must not show
			t.Fatal(err)
		}
		s.rogue.Echo(srv, "x", 300*time.Millisecond)
		select {
		case line, ok := <-lines:
			if !ok {
				t.Fatal("trireme flows -f ended")
			}
			var f node.Flow
			if err := json.Unmarshal([]byte(line), &f); err != nil {
				t.Fatalf("%q: %v", line, err)
			}
			if f.Verdict != "denied" || f.LocalName != s.webN || f.Client.Addr() != s.rogue.Addr {
				t.Fatalf("followed a record the filters leave out: %s", dumpFlows([]node.Flow{f}))
			}
			return
		case <-time.After(2 * time.Second):
		}
		if time.Now().After(deadline) {
			t.Fatal("trireme flows -f printed no denied connection")
		}
	}
}

// TestFlowsBadQueries: bad filters are refused with a message naming them,
// by the CLI (exit 2) and by the API (400), and the daemon keeps serving.
func TestFlowsBadQueries(t *testing.T) {
	s := newFlowScene(t, "observe: {flowRing: 64}\n")
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--verdict", "maybe"}, "--verdict"},
		{[]string{"--peer", "10.0.0.0/99"}, "--peer"},
		{[]string{"--pu-selector", "app in ("}, "--pu-selector"},
		{[]string{"--port", "99999"}, "--port"},
		{[]string{"--proto", "tcpx"}, "--proto"},
		{[]string{"--reason", "bad-luck"}, "--reason"},
		{[]string{"--direction", "sideways"}, "--direction"},
		{[]string{"--since", "yesterday"}, "--since"},
		{[]string{"--last", "-3"}, "--last"},
		{[]string{"-o", "yaml"}, "-o"},
	} {
		out, err := exec.Command(testenv.Binary(t), append([]string{"flows", "--socket", s.d.Socket}, tc.args...)...).CombinedOutput()
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != 2 || !strings.Contains(string(out), tc.want) {
			t.Errorf("flows %v: %v, want exit 2 naming %s:\n%s", tc.args, err, tc.want, out)
		}
	}
	hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", s.d.Socket)
	}}, Timeout: 10 * time.Second}
	for _, q := range []string{
		"colour=blue", "last=x", "last=1&last=2", "follow=perhaps", "after=-1", "since=" + url.QueryEscape("\x00"),
		"pu-selector=" + url.QueryEscape("a=\x00b"), "peer=" + strings.Repeat("9", 600), "verdict=" + strings.Repeat("a&verdict=", 70) + "a",
		"peer-selector=" + url.QueryEscape("!!!"), "rule=" + strings.Repeat("r", 513),
	} {
		resp, err := hc.Get("http://trireme/v1/flows?" + q)
		if err != nil {
			t.Fatalf("%s: %v", q, err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusBadRequest || !strings.Contains(string(body), "invalid request") {
			t.Errorf("GET /v1/flows?%.80s: %d %s, want 400", q, resp.StatusCode, body)
		}
	}
	// Still serving, and a ring of 64 holds at most 64 records.
	for range 12 {
		s.rogue.Echo(netip.AddrPortFrom(s.web.Addr, 8080), "x", 100*time.Millisecond)
	}
	s.connect(t)
	fs := s.waitFlows(t, hasVerdicts("allowed", "denied", "rejected"))
	if len(fs) > 64 {
		t.Errorf("a ring of 64 answered %d records", len(fs))
	}
	// trireme stats and the metrics show its size and fill.
	st, err := s.d.Client().Stats()
	if err != nil {
		t.Fatal(err)
	}
	if r := st.FlowRing; r.Size != 64 || r.Records < len(fs) || r.Records > 64 || r.Total < uint64(r.Records) {
		t.Errorf("stats: flow ring %+v, answered %d records", r, len(fs))
	}
	out := testenv.RunBin(t, "stats", "--socket", s.d.Socket)
	if !strings.Contains(out, "flow ring: ") || !strings.Contains(out, " of 64 records") {
		t.Errorf("trireme stats does not show the ring:\n%s", out)
	}
	m, err := s.d.Client().Metrics()
	if err != nil || !strings.Contains(m, "trireme_flow_ring_size 64") || !strings.Contains(m, "trireme_flow_ring_records ") {
		t.Errorf("metrics lack the ring (%v)", err)
	}
}
