package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/spf13/cobra"
)

func runCmd(t *testing.T, cmd *cobra.Command, args ...string) (string, string, error) {
	t.Helper()
	var out, errOut bytes.Buffer
	cmd.SilenceUsage, cmd.SilenceErrors = true, true
	cmd.SetOut(&out)
	cmd.SetErr(&errOut)
	cmd.SetArgs(args)
	err := cmd.Execute()
	return out.String(), errOut.String(), err
}

var examplePolicy = filepath.Join("..", "..", "examples", "policy.yaml")

func TestPolicyCheck(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.yaml")
	if err := os.WriteFile(bad, []byte("policies:\n  - name: a\n    selector: \"app in (x\"\n    ingress:\n      - ports: [tcp/0]\n        action: deny\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	out, _, err := runCmd(t, newPolicyCmd(), "check", examplePolicy)
	if err != nil || !strings.Contains(out, "policy.yaml: ok (6 policies, 13 rules, 2 target networks, 1 excluded networks)") {
		t.Fatalf("check example: %v\n%s", err, out)
	}
	out, errOut, err := runCmd(t, newPolicyCmd(), "check", examplePolicy, bad)
	var ee *exitError
	if !errors.As(err, &ee) || ee.code != 1 {
		t.Fatalf("check bad file: err %v, want exit code 1", err)
	}
	want := []string{
		bad + `:3:15: policies[0].selector: bad selector "app in (x": unable to parse requirement: found '', expected: ',' or ')'`,
		bad + `:5:17: policies[0].ingress[0].ports[0]: bad port "tcp/0": port 0 out of range 1-65535`,
		bad + `:6:17: policies[0].ingress[0].action: bad action "deny": want allow or reject (what no rule allows is denied)`,
	}
	if strings.TrimSpace(errOut) != strings.Join(want, "\n") {
		t.Errorf("errors:\n%s\nwant:\n%s", errOut, strings.Join(want, "\n"))
	}
	if !strings.Contains(out, "policy.yaml: ok") || strings.Contains(out, "bad.yaml") {
		t.Errorf("stdout: %s", out)
	}
}

func TestPolicyExplain(t *testing.T) {
	cases := []struct {
		name string
		args []string
		want []string // lines that must appear, in order
	}{
		{"frontend to web", []string{"--from", "app=frontend,env=prod", "--to", "app=web,env=prod", "--port", "tcp/80", "--from-ip", "10.0.1.10"}, []string{
			"flow      [app=frontend,env=prod] 10.0.1.10 -> [app=web,env=prod] tcp/80",
			"server ingress:",
			"  policies  web, external-services, admin-ssh",
			"  verdict   allow",
			`  rule      web ingress[0] "from-frontend" allow at ` + examplePolicy + ":35:9",
			"client egress:",
			"  verdict   allow",
			`  rule      frontend egress[0] "to-web" allow at ` + examplePolicy + ":26:9",
			"verdict   allow",
		}},
		{"admin ssh to db is rejected", []string{"--from", "192.168.100.5", "--to", "app=db,@sys:kind=container", "--port", "tcp/22"}, []string{
			"note      --to has no address (--to-ip): CIDR rules cannot match it",
			"  verdict   reject (policy-rejected)",
			`  rule      db ingress[2] "never-ssh" reject at ` + examplePolicy + ":74:9",
			"  log       yes",
			"client egress:",
			"  note      no enforcer on this side (not a PU)",
			"verdict   reject (server-ingress: policy-rejected)",
		}},
		{"admin ssh to web", []string{"--from", "192.168.100.5", "--to", "app=web,env=prod", "--port", "tcp/22"}, []string{
			`  rule      admin-ssh ingress[0] "ssh-from-admins" allow at ` + examplePolicy + ":118:9",
			"verdict   allow",
		}},
		{"kiosk is carved out", []string{"--from", "192.168.100.66", "--to", "app=web,env=prod", "--port", "tcp/22"}, []string{
			"  verdict   deny (policy-denied)",
			"  rule      -",
			"verdict   deny (server-ingress: policy-denied)",
		}},
		{"observed rule", []string{"--from", "app=reports", "--to", "app=db,@sys:kind=container", "--port", "tcp/5432"}, []string{
			"  verdict   deny (policy-denied)",
			"  rule      -",
			`  observed  db ingress[1] "from-reports" allow (observe: continue) at ` + examplePolicy + ":66:9",
			`  rule      reports egress[0] "to-db" allow at ` + examplePolicy + ":85:9",
			"verdict   deny (server-ingress: policy-denied)",
		}},
		{"egress ACL", []string{"--from", "app=web,env=prod", "--to", "198.51.100.53", "--port", "udp/53"}, []string{
			"server ingress:",
			"  note      no enforcer on this side (not a PU)",
			`  rule      external-services egress[0] "dns" allow at ` + examplePolicy + ":102:9",
			"verdict   allow",
		}},
		{"missing token", []string{"--from", "10.0.9.9", "--to", "app=web,env=prod", "--port", "tcp/80"}, []string{
			"  verdict   deny (missing-token)",
			"  note      10.0.9.9 is inside the target networks but presents no token",
			"verdict   deny (server-ingress: missing-token)",
		}},
		{"excluded", []string{"--from", "10.0.255.9", "--to", "app=db", "--port", "tcp/5432"}, []string{
			"verdict   allow (excluded-network)",
		}},
		// A PU that holds an excluded address is not excluded: its own
		// egress still decides (only its peers bypass checks toward it).
		// Its peer's enforcer lets it through unchecked, so the SYN-ACK it
		// gets carries no token: its enforcer refuses it (missing-token), as
		// the enforcers do (dataplane/replay TestDecideMatchesEnforcers).
		{"PU with an excluded address", []string{"--from", "app=web,env=prod", "--from-ip", "10.0.255.9", "--to", "app=frontend", "--to-ip", "10.0.1.10", "--port", "tcp/443"}, []string{
			"server ingress:",
			"  note      the peer is in the excluded networks: no check",
			"client egress:",
			"  verdict   deny (missing-token)",
			"  note      the peer sends no token: its enforcer lets 10.0.255.9 (excluded networks) through unchecked",
			"verdict   deny (client-egress: missing-token)",
		}},
		// Link-local peers are inside: no token, no entry, whatever an
		// internet CIDR rule allows.
		{"link-local peer", []string{"--from", "fe80::1", "--to", "app=frontend", "--port", "tcp/443"}, []string{
			"  verdict   deny (missing-token)",
			"  note      fe80::1 is inside the target networks but presents no token",
			"verdict   deny (server-ingress: missing-token)",
		}},
		{"client egress denies", []string{"--from", "app=web,env=prod", "--from-ip", "10.0.2.10", "--to", "app=frontend", "--to-ip", "10.0.1.10", "--port", "tcp/443"}, []string{
			"server ingress:",
			"  verdict   allow",
			`  rule      frontend ingress[0] "public-https" allow at ` + examplePolicy + ":19:9",
			"client egress:",
			"  verdict   deny (policy-denied)",
			"verdict   deny (client-egress: policy-denied)",
		}},
		// The server is outside the target networks: the client's enforcer
		// adds no token toward it and decides first, on its SYN, by
		// address; the server's wants the token of a client inside them.
		{"both deny", []string{"--from", "app=db", "--to", "app=web,env=prod", "--port", "tcp/80", "--to-ip", "192.0.2.80"}, []string{
			"note      --from has no address (--from-ip): CIDR rules cannot match it",
			"note      192.0.2.80 is outside the target networks: peers will not exchange tokens with it",
			"server ingress:",
			"  verdict   deny (missing-token)",
			"  note      the peer sends no token: its enforcer sees 192.0.2.80 outside the target networks",
			"client egress:",
			"  verdict   deny (policy-denied)",
			"verdict   deny (client-egress: policy-denied)",
		}},
		// UDP between PUs carries identity (the datagram handshake):
		// selector rules (here web's no-dev-clients reject) match it, and
		// the server decides first, on the hello.
		{"udp between PUs", []string{"--from", "app=frontend,env=dev", "--from-ip", "10.0.1.11", "--to", "app=web,env=prod", "--to-ip", "10.0.2.10", "--port", "udp/80"}, []string{
			"server ingress:",
			"  verdict   reject (policy-rejected)",
			"client egress:",
			"  verdict   deny (policy-denied)",
			"verdict   reject (server-ingress: policy-rejected)",
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			out, _, err := runCmd(t, newPolicyCmd(), append([]string{"explain", "--policy", examplePolicy}, c.args...)...)
			if err != nil {
				t.Fatal(err)
			}
			rest := out
			for _, w := range c.want {
				i := strings.Index(rest, w+"\n")
				if i < 0 {
					t.Fatalf("missing (in order) %q in:\n%s", w, out)
				}
				rest = rest[i+len(w):]
			}
		})
	}
}

func TestPolicyExplainJSON(t *testing.T) {
	out, _, err := runCmd(t, newPolicyCmd(), "explain", "--policy", examplePolicy, "--from", "app=reports",
		"--to", "app=web,env=prod", "--port", "tcp/80", "--json")
	if err != nil {
		t.Fatal(err)
	}
	var f struct {
		Verdict, Reason, DecidedBy string
		ServerIngress              struct{ Verdict string }
		ClientEgress               struct {
			Verdict string
			Rule    struct {
				Policy, Name, Observe, Pos string
			}
			Observed *struct{ Name string }
		}
	}
	if err := json.Unmarshal([]byte(out), &f); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	eg := f.ClientEgress
	if f.Verdict != "deny" || f.Reason != "policy-denied" || f.DecidedBy != "server-ingress" || f.ServerIngress.Verdict != "deny" ||
		eg.Verdict != "allow" || eg.Rule.Name != "to-web-trial" || eg.Rule.Observe != "apply" || eg.Observed == nil || eg.Observed.Name != "to-web-trial" {
		t.Fatalf("unexpected: %+v\n%s", f, out)
	}
}

func TestPolicyExplainErrors(t *testing.T) {
	cases := [][]string{
		{"--from", "10.0.0.1", "--to", "192.0.2.1", "--port", "tcp/80"},
		{"--from", "app=web", "--to", "app=db", "--port", "tcp"},
		{"--from", "app=web", "--to", "app=db", "--port", "http/80"},
		{"--from", "=x", "--to", "app=db", "--port", "tcp/80"},
		{"--from", "app=web", "--to", "app=db", "--port", "tcp/80", "--to-ip", "nope"},
	}
	for _, c := range cases {
		if out, _, err := runCmd(t, newPolicyCmd(), append([]string{"explain", "--policy", examplePolicy}, c...)...); err == nil {
			t.Errorf("%v: no error\n%s", c, out)
		}
	}
}

func TestDemoOffline(t *testing.T) {
	out, _, err := runCmd(t, newDemoCmd(), "--offline", "--examples", filepath.Join("..", "..", "examples"))
	if err != nil {
		t.Fatal(err)
	}
	for _, row := range [][]string{
		{"frontend -> web:tcp/80", "ALLOW", "allow web/from-frontend", "allow frontend/to-web", "-"},
		{"frontend-dev -> web:tcp/80", "REJECT", "reject web/no-dev-clients", "allow frontend/to-web", "policy-rejected"},
		{"web -> db:tcp/5432", "ALLOW", "allow db/from-web", "allow web/to-db", "-"},
		{"reports -> db:tcp/5432", "DENY", "deny (no rule), observed db/from-reports", "allow reports/to-db", "policy-denied"},
		{"web -> dns:udp/53", "ALLOW", "(no enforcer)", "allow external-services/dns", "-"},
		{"web -> api-blocked:tcp/443", "DENY", "(no enforcer)", "deny (no rule)", "policy-denied"},
		{"admin -> web:tcp/22", "ALLOW", "allow admin-ssh/ssh-from-admins", "(no enforcer)", "-"},
		{"admin -> db:tcp/22", "REJECT", "reject db/never-ssh", "(no enforcer)", "policy-rejected"},
		{"kiosk -> web:tcp/22", "DENY", "deny (no rule)", "(no enforcer)", "policy-denied"},
		{"legacy-vm -> web:tcp/80", "DENY", "deny missing-token", "(no enforcer)", "missing-token"},
		{"monitor -> db:tcp/5432", "ALLOW", "(bypassed)", "(no enforcer)", "excluded-network"},
	} {
		found := false
		for _, line := range strings.Split(out, "\n") {
			if strings.Join(strings.Fields(line), " ") == strings.Join(strings.Fields(strings.Join(row, " ")), " ") {
				found = true
			}
		}
		if !found {
			t.Errorf("no row %q in:\n%s", strings.Join(row, " | "), out)
		}
	}
	// Two external hosts never appear together: no enforcer decides.
	if strings.Contains(out, "admin -> dns:") {
		t.Error("a connection between two external hosts was shown")
	}
}
