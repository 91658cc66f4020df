package node_test

import (
	"encoding/json"
	"errors"
	"os/exec"
	"slices"
	"strings"
	"testing"

	"github.com/trireme-go/trireme/node"
	"github.com/trireme-go/trireme/testenv"
)

// probeResult is the part of `trireme probe --json` the test reads.
type probeResult struct {
	Outcome   string     `json:"outcome"`
	Verdict   string     `json:"verdict"`
	DecidedBy string     `json:"decidedBy"`
	Client    *node.Flow `json:"client"`
	Server    *node.Flow `json:"server"`
	Handshake int64      `json:"handshakeNs"`
}

func runProbe(t *testing.T, s *flowScene, args ...string) (int, probeResult, string) {
	t.Helper()
	out, err := exec.Command(testenv.Binary(t), append([]string{"probe", "--socket", s.d.Socket, "--timeout", "1s"}, args...)...).Output()
	code := 0
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
		out = append(out, ee.Stderr...)
	} else if err != nil {
		t.Fatal(err)
	}
	var r probeResult
	if slices.Contains(args, "--json") && code < 2 {
		if err := json.Unmarshal(out, &r); err != nil {
			t.Fatalf("probe %v: %v\n%s", args, err, out)
		}
	}
	return code, r, string(out)
}

func ruleName(f *node.Flow) string {
	if f == nil || f.Rule == nil {
		return ""
	}
	return f.Rule.Name
}

// TestProbe: `trireme probe FROM TO:PORT` makes a real connection from the
// PU and names the verdict, the deciding side, the rule and the verified
// peer, for an allowed connection, one the server rejects, one the server
// denies and one the client's own egress policy denies.
func TestProbe(t *testing.T) {
	s := newFlowScene(t, "")

	code, r, out := runProbe(t, s, "--json", s.frontN, s.webN+":8080")
	if code != 0 || r.Outcome != "ok" || r.Verdict != "allowed" || r.DecidedBy != "both" || r.Handshake <= 0 {
		t.Errorf("frontend -> web: exit %d %+v\n%s", code, r, out)
	}
	if ruleName(r.Client) != "to-web" || ruleName(r.Server) != "from-frontend" {
		t.Errorf("frontend -> web: rules %q, %q\n%s", ruleName(r.Client), ruleName(r.Server), out)
	}
	if r.Client == nil || !slices.Contains(r.Client.Remote.Tags, "app=web") || r.Server == nil || !slices.Contains(r.Server.Remote.Tags, "app=frontend") {
		t.Errorf("frontend -> web: the peers' verified tags are missing\n%s", out)
	}

	code, r, out = runProbe(t, s, "--json", s.devN, s.web.Addr.String()+":8080")
	if code != 1 || r.Verdict != "rejected" || r.DecidedBy != "server" || ruleName(r.Server) != "no-dev-clients" {
		t.Errorf("dev -> web: exit %d %+v\n%s", code, r, out)
	}

	code, r, out = runProbe(t, s, "--json", s.rogueN, s.webN+":8080")
	if code != 1 || r.Verdict != "denied" || r.DecidedBy != "server" || r.Server == nil || r.Server.Rule != nil || r.Server.Reason != "policy-denied" {
		t.Errorf("rogue -> web: exit %d %+v\n%s", code, r, out)
	}

	// The web admits the frontend on 9090, the frontend's egress does
	// not: its own enforcer refuses (at the SYN-ACK).
	code, r, out = runProbe(t, s, "--json", s.frontN, s.webN+":9090")
	if code != 1 || r.Verdict != "denied" || r.DecidedBy != "client" || r.Client == nil || r.Client.Direction != "egress" || r.Client.Rule != nil {
		t.Errorf("frontend -> web:9090: exit %d %+v\n%s", code, r, out)
	}
	if r.Server == nil || ruleName(r.Server) != "from-frontend" {
		t.Errorf("frontend -> web:9090: the server's side should have admitted it\n%s", out)
	}

	// The text report names the same.
	_, _, text := runProbe(t, s, s.devN, s.webN+":8080")
	for _, want := range []string{"rejected by the server side", "no-dev-clients", "peer verified as", "app=dev"} {
		if !strings.Contains(text, want) {
			t.Errorf("the report lacks %q:\n%s", want, text)
		}
	}
	_, _, text = runProbe(t, s, s.frontN, s.webN+":8080")
	for _, want := range []string{"allowed", "handshake", "from-frontend", "to-web"} {
		if !strings.Contains(text, want) {
			t.Errorf("the report lacks %q:\n%s", want, text)
		}
	}

	for _, args := range [][]string{{"nosuch", s.webN + ":8080"}, {s.frontN, s.webN + ":99999"}, {s.frontN, "nosuch:80"}, {s.frontN, "8080"}, {s.frontN}} {
		if code, _, out := runProbe(t, s, args...); code != 2 {
			t.Errorf("probe %v: exit %d, want 2\n%s", args, code, out)
		}
	}
}
