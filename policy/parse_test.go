package policy

import (
	"net/netip"
	"os"
	"strings"
	"testing"

	"github.com/trireme-go/trireme/ipproto"
)

// TestParseErrors: every problem is reported, each with its exact
// file:line:col, field path and message; no Set is returned.
func TestParseErrors(t *testing.T) {
	cases := []struct {
		name string
		src  string
		want []string // full error lines, in order
	}{
		{"unknown keys everywhere", `targetNetwork: [10.0.0.0/8]
policies:
  - name: a
    selectr: app=web
    selector: app=web
    ingress:
      - frm: []
        action: allow
        from: [{cidr: 10.0.0.0/8, exept: []}]
`, []string{
			`f.yaml:1:1: targetNetwork: unknown key "targetNetwork" in a policy document (want one of targetNetworks, excludedNetworks, policies)`,
			`f.yaml:4:5: policies[0].selectr: unknown key "selectr" in a policy (want one of name, description, selector, ingress, egress)`,
			`f.yaml:7:9: policies[0].ingress[0].frm: unknown key "frm" in ingress rule (want one of name, from, ports, action, log, observe)`,
			`f.yaml:9:35: policies[0].ingress[0].from[0].exept: unknown key "exept" in a peer (selector, or cidr with except) (want one of selector, cidr, except)`,
		}},
		{"cidrs", `targetNetworks: [10.0.0.0/33, 10.0.0.1/8, "::ffff:10.0.0.0/104", banana]
excludedNetworks: 10.0.0.0/8
policies:
  - name: a
    selector: "*"
    egress:
      - to:
          - cidr: 10.0.0.0/16
            except: [10.1.0.0/24, 10.0.0.0/8, "fd00::/64", 10.0.5.0/24]
        action: allow
      - to: [{except: [10.0.0.0/24]}]
        action: allow
`, []string{
			`f.yaml:1:18: targetNetworks[0]: bad CIDR "10.0.0.0/33"`,
			`f.yaml:1:31: targetNetworks[1]: bad CIDR "10.0.0.1/8": host bits set (did you mean 10.0.0.0/8?)`,
			`f.yaml:1:43: targetNetworks[2]: bad CIDR "::ffff:10.0.0.0/104": IPv4-mapped IPv6 prefix; write the IPv4 prefix`,
			`f.yaml:1:66: targetNetworks[3]: bad CIDR "banana"`,
			`f.yaml:2:19: excludedNetworks: want a list of CIDRs, got a string`,
			`f.yaml:9:22: policies[0].egress[0].to[0].except[0]: 10.1.0.0/24 is not inside cidr 10.0.0.0/16`,
			`f.yaml:9:35: policies[0].egress[0].to[0].except[1]: 10.0.0.0/8 is not inside cidr 10.0.0.0/16`,
			`f.yaml:9:47: policies[0].egress[0].to[0].except[2]: fd00::/64 is not inside cidr 10.0.0.0/16`,
			`f.yaml:11:14: policies[0].egress[1].to[0]: empty peer: want selector or cidr`,
		}},
		{"ports", `policies:
  - name: a
    selector: "*"
    ingress:
      - ports: [tcp/0, tcp/65536, tcp/9000-8000, tcp/80-, http/80, icmp/8, 80, tcp/x, "udp/53"]
        action: allow
      - ports: []
        action: allow
      - ports: tcp/80
        action: allow
`, []string{
			`f.yaml:5:17: policies[0].ingress[0].ports[0]: bad port "tcp/0": port 0 out of range 1-65535`,
			`f.yaml:5:24: policies[0].ingress[0].ports[1]: bad port "tcp/65536": port 65536 out of range 1-65535`,
			`f.yaml:5:35: policies[0].ingress[0].ports[2]: bad port range "tcp/9000-8000": 9000 > 8000`,
			`f.yaml:5:50: policies[0].ingress[0].ports[3]: bad port range "tcp/80-": missing port number`,
			`f.yaml:5:59: policies[0].ingress[0].ports[4]: bad port "http/80": unknown protocol "http" (want tcp, udp, sctp, icmp or icmpv6)`,
			`f.yaml:5:68: policies[0].ingress[0].ports[5]: bad port "icmp/8": icmp has no ports`,
			`f.yaml:5:76: policies[0].ingress[0].ports[6]: want protocol[/port[-port]] such as tcp/80, got a number`,
			`f.yaml:5:80: policies[0].ingress[0].ports[7]: bad port "tcp/x": port "x" is not a number`,
			`f.yaml:7:16: policies[0].ingress[1].ports: empty port list (omit it to mean every port and protocol)`,
			`f.yaml:9:16: policies[0].ingress[2].ports: want a list of ports such as tcp/80, got a string`,
		}},
		{"selectors", `policies:
  - name: a
    selector: "app in (web"
  - name: b
    selector: ""
  - name: c
  - name: d
    selector: {}
  - name: e
    selector: "count>3"
  - name: f
    selector:
      matchExpressions:
        - {key: app, operator: Equals, values: [x]}
        - {key: app, operator: In}
        - {key: app, operator: Exists, values: [x]}
        - {operator: Exists}
  - name: g
    selector: "@SYS:name=x"
  - name: h
    selector: "sys.reserved.trireme/name=x"
  - name: i
    selector: {matchLabels: {"bad key!": x}}
    ingress:
      - from: [{selector: app=web, cidr: 10.0.0.0/8}]
        action: allow
      - from: [{selector: app=web, except: [10.0.0.0/8]}]
        action: allow
      - from: []
        action: allow
      - from: [{selector: ""}]
        action: allow
`, []string{
			`f.yaml:3:15: policies[0].selector: bad selector "app in (web": unable to parse requirement: found '', expected: ',' or ')'`,
			`f.yaml:5:15: policies[1].selector: empty value, want a selector`,
			`f.yaml:6:5: policies[2]: missing selector (use "*" to select every PU)`,
			`f.yaml:8:15: policies[3].selector: empty selector (use "*" to select everything)`,
			`f.yaml:10:15: policies[4].selector: bad selector "count>3": operator "gt" is not supported (use =, !=, in, notin, key, !key)`,
			`f.yaml:14:32: policies[5].selector.matchExpressions[0].operator: bad operator "Equals": want In, NotIn, Exists or DoesNotExist`,
			`f.yaml:15:11: policies[5].selector.matchExpressions[1]: operator In needs values`,
			`f.yaml:16:11: policies[5].selector.matchExpressions[2]: operator Exists takes no values`,
			`f.yaml:17:11: policies[5].selector.matchExpressions[3]: missing key`,
			`f.yaml:19:15: policies[6].selector: bad selector "@SYS:name=x": bad reserved key "@SYS:name": want @word:key with a lowercase word, e.g. @sys:image`,
			`f.yaml:21:15: policies[7].selector: bad selector "sys.reserved.trireme/name=x": key "sys.reserved.trireme/name" uses the reserved domain reserved.trireme; write reserved keys as @word:key`,
			`f.yaml:23:15: policies[8].selector: bad selector: key: Invalid value: "bad key!": name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')`,
			`f.yaml:25:36: policies[8].ingress[0].from[0].cidr: a peer is either a selector or a cidr, not both (write two peers)`,
			`f.yaml:27:36: policies[8].ingress[1].from[0].except: except belongs to a cidr peer`,
			`f.yaml:29:15: policies[8].ingress[2].from: empty peer list (omit it to mean every peer)`,
			`f.yaml:31:27: policies[8].ingress[3].from[0].selector: empty value, want a selector`,
		}},
		{"names actions observe types", `policies:
  - name: a
    selector: "*"
    ingress:
      - action: deny
      - action: allow
        observe: maybe
        log: yes please
      - action: [allow]
        name: {x: 1}
      - log: true
  - name: a
    selector: "*"
  - selector: "*"
  - name: ""
    selector: "*"
  - "just a string"
  - name: b
    name: c
    selector: "*"
    egress:
      - from: [{cidr: 10.0.0.0/8}]
        action: allow
    ingress: {action: allow}
`, []string{
			`f.yaml:5:17: policies[0].ingress[0].action: bad action "deny": want allow or reject (what no rule allows is denied)`,
			`f.yaml:7:18: policies[0].ingress[1].observe: bad observe mode "maybe": want continue or apply`,
			`f.yaml:8:14: policies[0].ingress[1].log: want true or false, got a string`,
			`f.yaml:9:17: policies[0].ingress[2].action: want an action (allow or reject), got a list`,
			`f.yaml:10:15: policies[0].ingress[2].name: want a rule name, got a mapping`,
			`f.yaml:11:9: policies[0].ingress[3]: missing action (allow or reject)`,
			`f.yaml:12:11: policies[1].name: duplicate policy name "a" (first defined at 2:11)`,
			`f.yaml:14:5: policies[2]: missing name`,
			`f.yaml:15:11: policies[3].name: empty value, want a policy name`,
			`f.yaml:17:5: policies[4]: want a policy (a mapping), got a string`,
			`f.yaml:19:5: policies[5].name: duplicate key`,
			`f.yaml:22:9: policies[5].egress[0].from: unknown key "from": egress rules name their peers in "to"`,
			`f.yaml:24:14: policies[5].ingress: want a list of rules, got a mapping`,
		}},
		{"yaml syntax", "policies:\n  - name: a\n    selector: [\n", []string{
			`f.yaml:3:1: did not find expected node content`,
		}},
		{"aliases", "policies:\n  - &p\n    name: a\n    selector: \"*\"\n  - *p\n", []string{
			`f.yaml:5:5: policies[1]: YAML aliases are not supported`,
		}},
		{"hostile nesting", strings.Repeat("[", 20000), []string{
			`f.yaml:1:1: exceeded max depth of 10000`,
		}},
		{"not a mapping", "- a\n- b\n---\n42\n", []string{
			`f.yaml:1:1: want a policy document (a mapping), got a list`,
			`f.yaml:4:1: want a policy document (a mapping), got a number`,
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s, err := Parse("f.yaml", []byte(c.src))
			if s != nil {
				t.Errorf("an invalid file yielded a Set")
			}
			if err == nil {
				t.Fatal("no error")
			}
			got := strings.Split(err.Error(), "\n")
			if strings.Join(got, "\n") != strings.Join(c.want, "\n") {
				t.Errorf("errors:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(c.want, "\n"))
			}
			if list, ok := err.(ErrorList); !ok || len(list) != len(c.want) {
				t.Errorf("want an ErrorList of %d", len(c.want))
			}
		})
	}
}

// TestParseValid: the accepted forms produce the model they say.
func TestParseValid(t *testing.T) {
	src := `# two documents
targetNetworks: [10.0.0.0/16]
---
targetNetworks: ["fd00::/64"]
excludedNetworks: [10.0.255.0/24, 192.0.2.7]
policies:
  - name: web
    description: the web tier
    selector: "app=web, env in (prod,staging)"
    ingress:
      - name: from-frontend
        from:
          - selector: app=frontend
          - cidr: 10.1.0.0/16
            except: [10.1.2.0/24]
        ports: [tcp/80, "tcp/8000-8080", udp/53, tcp, icmp, sctp/9]
        action: allow
        log: true
        observe: continue
      - action: reject
    egress:
      - to: [{selector: {matchLabels: {app: db}, matchExpressions: [{key: "@sys:kind", operator: In, values: [container]}]}}]
        action: allow
        observe: apply
---
# an empty document is fine
`
	s, err := Parse("v.yaml", []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	if got := prefixesString(s.TargetNetworks); got != "10.0.0.0/16 fd00::/64" {
		t.Errorf("targets %s", got)
	}
	if got := prefixesString(s.ExcludedNetworks); got != "10.0.255.0/24 192.0.2.7/32" {
		t.Errorf("excluded %s", got)
	}
	if len(s.Policies) != 1 {
		t.Fatalf("%d policies", len(s.Policies))
	}
	p := s.Policies[0]
	if p.Name != "web" || p.Selector.Text != "app=web, env in (prod,staging)" || p.Pos != (Position{"v.yaml", 7, 5}) {
		t.Errorf("policy %q %q %v", p.Name, p.Selector.Text, p.Pos)
	}
	r := p.Ingress[0]
	if r.Name != "from-frontend" || r.Action != Allow || !r.Log || r.Observe != ObserveContinue || r.Index != 0 || r.Pos != (Position{"v.yaml", 11, 9}) {
		t.Errorf("rule %+v", r)
	}
	if len(r.Peers) != 2 || r.Peers[0].Selector.Text != "app=frontend" || r.Peers[1].CIDR != netip.MustParsePrefix("10.1.0.0/16") ||
		prefixesString(r.Peers[1].Except) != "10.1.2.0/24" {
		t.Errorf("peers %+v", r.Peers)
	}
	wantPorts := []PortRange{{ipproto.TCP, 80, 80}, {ipproto.TCP, 8000, 8080}, {ipproto.UDP, 53, 53}, {ipproto.TCP, 0, 65535}, {ipproto.ICMP, 0, 65535}, {ipproto.SCTP, 9, 9}}
	if len(r.Ports) != len(wantPorts) {
		t.Fatalf("ports %v", r.Ports)
	}
	for i := range wantPorts {
		if r.Ports[i] != wantPorts[i] {
			t.Errorf("port %d: %v, want %v", i, r.Ports[i], wantPorts[i])
		}
	}
	if r2 := p.Ingress[1]; r2.Action != Reject || r2.Index != 1 || len(r2.Peers) != 0 || len(r2.Ports) != 0 || r2.Observe != Enforce {
		t.Errorf("rule 2 %+v", r2)
	}
	eg := p.Egress[0]
	if eg.Observe != ObserveApply || eg.Peers[0].Selector.Text != "@sys:kind=container,app=db" {
		t.Errorf("egress %+v %q", eg, eg.Peers[0].Selector.Text)
	}
}

func prefixesString(ps []netip.Prefix) string {
	s := make([]string, len(ps))
	for i, p := range ps {
		s[i] = p.String()
	}
	return strings.Join(s, " ")
}

func TestParseSelectorReserved(t *testing.T) {
	s, err := ParseSelector("@sys:image in (nginx, redis), @ns:kubernetes.io/metadata.name=prod, !@sys:legacy")
	if err != nil {
		t.Fatal(err)
	}
	got := requirementsText(s.Requirements())
	want := "@ns:kubernetes.io/metadata.name=prod,@sys:image in (nginx,redis),!@sys:legacy"
	if got != want {
		t.Errorf("requirements %q, want %q", got, want)
	}
	for _, k := range []string{"@sys:image", "@ns:kubernetes.io/metadata.name", "@x:a.b/c"} {
		e, err := encodeKey(k)
		if err != nil || decodeKey(e) != k {
			t.Errorf("%s -> %s -> %s (%v)", k, e, decodeKey(e), err)
		}
	}
}

func TestLoadExamples(t *testing.T) {
	if _, err := Load("../examples/policy.yaml"); err != nil {
		t.Fatal(err)
	}
	if _, err := Load("../examples/no-such-file.yaml"); !os.IsNotExist(err) {
		t.Errorf("missing file: %v", err)
	}
}
