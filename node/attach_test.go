package node_test

import (
	"errors"
	"fmt"
	"os/exec"
	"strings"
	"testing"

	"github.com/trireme-go/trireme/node"
	"github.com/trireme-go/trireme/testenv"
)

// TestAttachOrchestratorTags: labels still cannot carry reserved ('@')
// keys, through the CLI or the API, but an orchestrator integration sets
// reserved identity tags with --tag (AttachRequest.Tags); they win over the
// monitor's own @sys:name, and the enforcer decides with them.
func TestAttachOrchestratorTags(t *testing.T) {
	testenv.RequireRoot(t)
	sfx := testenv.Suffix()
	testenv.AssertNothingLeft(t, sfx)
	n := testenv.NewNode(t, testenv.NodeOptions{PUs: 3, Suffix: sfx})
	cl, srv, forger := n.PUs[0], n.PUs[1], n.PUs[2]
	policy := fmt.Sprintf(`
targetNetworks: [%s]
policies:
  - name: all-egress
    selector: "*"
    egress: [{action: allow}]
  - name: server
    selector: "@sys:namespace=prod,@sys:name=server"
    ingress:
      - from: [{selector: "@sys:namespace=prod,@ns:team=blue"}]
        ports: [tcp/8080]
        action: allow
`, n.Subnet)
	d := testenv.NewDaemon(t, n, testenv.DaemonOptions{SecretsDir: testenv.PSKDir(t), Policy: policy})
	d.Start()

	refused := []struct {
		name string
		args []string
	}{
		{"cli label with a reserved key", []string{"--label", "@sys:namespace=prod"}},
		{"cli label with a namespace-label key", []string{"--label", "@ns:team=blue"}},
		{"cli tag with an empty key", []string{"--tag", "=x"}},
	}
	for _, tc := range refused {
		t.Run(tc.name, func(t *testing.T) {
			args := append([]string{"pu", "attach", forger.Name, "--socket", d.Socket}, tc.args...)
			out, err := exec.Command(testenv.Binary(t), args...).CombinedOutput()
			if err == nil {
				t.Fatalf("trireme %s succeeded:\n%s", strings.Join(args, " "), out)
			}
		})
	}
	apiRefused := []struct {
		name string
		req  node.AttachRequest
	}{
		{"api label with a reserved key", node.AttachRequest{NetNS: forger.Name, Labels: map[string]string{"@sys:namespace": "prod"}}},
		{"api tag key with '='", node.AttachRequest{NetNS: forger.Name, Tags: map[string]string{"a=b": "c"}}},
		{"api tag with an empty key", node.AttachRequest{NetNS: forger.Name, Tags: map[string]string{" ": "c"}}},
	}
	for _, tc := range apiRefused {
		t.Run(tc.name, func(t *testing.T) {
			_, err := d.Client().AttachPU(tc.req)
			var apiErr *node.APIError
			if !errors.As(err, &apiErr) || apiErr.Status != 400 {
				t.Fatalf("attach %+v: %v, want a 400 refusal", tc.req, err)
			}
		})
	}
	if pus, err := d.Client().ListPUs(); err != nil || len(pus) != 0 {
		t.Fatalf("after refused attaches: PUs %v (%v), want none", pus, err)
	}

	// Accepted: reserved tags from the orchestrator, user labels beside.
	testenv.RunBin(t, "pu", "attach", srv.Name, "--socket", d.Socket, "--label", "app=server",
		"--tag", "@sys:namespace=prod", "--tag", "@sys:name=server")
	testenv.RunBin(t, "pu", "attach", cl.Name, "--socket", d.Socket, "--label", "app=client",
		"--tag", "@sys:namespace=prod", "--tag", "@ns:team=blue", "--tag", "@sys:name=client")
	// The forger claims the namespace label as a plain label: a label key
	// cannot start with '@', and "team=blue" is not "@ns:team=blue".
	testenv.RunBin(t, "pu", "attach", forger.Name, "--socket", d.Socket, "--label", "team=blue",
		"--tag", "@sys:namespace=prod")

	pus, err := d.Client().ListPUs()
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]map[string]string{
		srv.Name:    {"app": "server", "@sys:namespace": "prod", "@sys:name": "server"},
		cl.Name:     {"app": "client", "@sys:namespace": "prod", "@ns:team": "blue", "@sys:name": "client"},
		forger.Name: {"team": "blue", "@sys:namespace": "prod", "@sys:name": forger.Name},
	}
	if len(pus) != len(want) {
		t.Fatalf("PUs %v, want %d", pus, len(want))
	}
	for _, p := range pus {
		w, ok := want[p.Name]
		if !ok {
			t.Fatalf("unexpected PU %+v", p)
		}
		for k, v := range w {
			if p.Tags[k] != v {
				t.Errorf("PU %s: tag %s = %q, want %q (tags %v)", p.Name, k, p.Tags[k], v, p.Tags)
			}
		}
		if p.Name == forger.Name {
			if _, ok := p.Tags["@ns:team"]; ok {
				t.Errorf("forger got @ns:team from a label: %v", p.Tags)
			}
		}
	}

	addr := srv.ServeEcho(8080)
	if err := connect(cl, addr); err != nil {
		t.Errorf("client with @ns:team=blue -> server: %v", err)
	}
	if err := connect(forger, addr); !isRefused(err) {
		t.Errorf("forger with label team=blue -> server: %v, want a prompt RST", err)
	}
}
