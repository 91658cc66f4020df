package policy

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/trireme-go/trireme/identity"
	"github.com/trireme-go/trireme/ipproto"
	"github.com/trireme-go/trireme/reason"
)

func mustEngine(t *testing.T, yamlText string) *Engine {
	t.Helper()
	s, err := Parse("test.yaml", []byte(yamlText))
	if err != nil {
		t.Fatalf("parse:\n%v", err)
	}
	e, err := Compile(s)
	if err != nil {
		t.Fatal(err)
	}
	return e
}

func tags(kvs ...string) identity.Tags {
	t, err := identity.ParseTags(kvs)
	if err != nil {
		panic(err)
	}
	return t
}

func ref(r *RuleRef) string {
	if r == nil {
		return "-"
	}
	return fmt.Sprintf("%s/%s/%d", r.Policy, r.Direction, r.Index)
}

// TestSelectorOperators: every operator of both selector forms, on peers
// with and without the key (the absent-key cases are where an inverted index
// goes wrong).
func TestSelectorOperators(t *testing.T) {
	cases := []struct {
		sel  string // YAML value of the peer selector
		peer identity.Tags
		want bool
	}{
		{`app=web`, tags("app=web"), true},
		{`app=web`, tags("app=db"), false},
		{`app=web`, tags("tier=web"), false},
		{`app==web`, tags("app=web"), true},
		{`app==web`, tags("app=webx"), false},
		{`app!=web`, tags("app=web"), false},
		{`app!=web`, tags("app=db"), true},
		{`app!=web`, tags("tier=x"), true},
		{`app!=web`, identity.Tags{}, true},
		{`app in (web, db)`, tags("app=db"), true},
		{`app in (web, db)`, tags("app=api"), false},
		{`app in (web, db)`, tags("x=web"), false},
		{`app notin (web, db)`, tags("app=db"), false},
		{`app notin (web, db)`, tags("app=api"), true},
		{`app notin (web, db)`, tags("x=y"), true},
		{`app`, tags("app="), true},
		{`app`, tags("app=x"), true},
		{`app`, tags("apps=x"), false},
		{`"!app"`, tags("app=x"), false},
		{`"!app"`, tags("b=x"), true},
		{`"!app"`, identity.Tags{}, true},
		{`app=web, env in (prod,staging), tier!=db, !legacy`, tags("app=web", "env=prod"), true},
		{`"app=web, env in (prod,staging), tier!=db, !legacy"`, tags("app=web", "env=prod", "tier=db"), false},
		{`"app=web, env in (prod,staging), tier!=db, !legacy"`, tags("app=web", "env=prod", "legacy=1"), false},
		{`"app=web, env in (prod,staging), tier!=db, !legacy"`, tags("app=web", "env=dev"), false},
		{`"app=web, env in (prod,staging), tier!=db, !legacy"`, tags("app=web", "env=staging", "tier=web"), true},
		{`"app=web,app=db"`, tags("app=web"), false}, // contradictory: matches nothing
		{`"@sys:image=nginx"`, tags("@sys:image=nginx"), true},
		{`"@sys:image=nginx"`, tags("image=nginx"), false},
		{`"@sys:image"`, tags("@sys:image=x"), true},
		{`"!@sys:image"`, tags("@sys:image=x"), false},
		{`"@ns:kubernetes.io/metadata.name in (prod)"`, tags("@ns:kubernetes.io/metadata.name=prod"), true},
		{`"@ns:kubernetes.io/metadata.name notin (prod)"`, tags("@ns:kubernetes.io/metadata.name=prod"), false},
		{`"*"`, identity.Tags{}, true},
		{`"*"`, tags("a=b"), true},
		// structured form
		{`{matchLabels: {app: web}}`, tags("app=web"), true},
		{`{matchLabels: {app: web, env: prod}}`, tags("app=web"), false},
		{`{matchLabels: {"@sys:name": db1}}`, tags("@sys:name=db1"), true},
		{`{matchExpressions: [{key: app, operator: In, values: [web, db]}]}`, tags("app=db"), true},
		{`{matchExpressions: [{key: app, operator: In, values: [web, db]}]}`, identity.Tags{}, false},
		{`{matchExpressions: [{key: app, operator: NotIn, values: [web]}]}`, identity.Tags{}, true},
		{`{matchExpressions: [{key: app, operator: NotIn, values: [web]}]}`, tags("app=web"), false},
		{`{matchExpressions: [{key: app, operator: Exists}]}`, tags("app=1"), true},
		{`{matchExpressions: [{key: app, operator: Exists}]}`, identity.Tags{}, false},
		{`{matchExpressions: [{key: app, operator: DoesNotExist}]}`, identity.Tags{}, true},
		{`{matchExpressions: [{key: app, operator: DoesNotExist}]}`, tags("app=1"), false},
		{`{matchLabels: {app: web}, matchExpressions: [{key: env, operator: NotIn, values: [dev]}]}`, tags("app=web", "env=dev"), false},
		{`{matchLabels: {app: web}, matchExpressions: [{key: env, operator: NotIn, values: [dev]}]}`, tags("app=web"), true},
	}
	for _, c := range cases {
		t.Run(c.sel+"/"+c.peer.String(), func(t *testing.T) {
			sel := c.sel
			if !strings.HasPrefix(sel, "{") && !strings.HasPrefix(sel, `"`) {
				sel = strconv.Quote(sel)
			}
			e := mustEngine(t, `
policies:
  - name: p
    selector: "*"
    ingress:
      - from: [{selector: `+sel+`}]
        action: allow
`)
			pu := e.ForPU(identity.Tags{})
			d := pu.Ingress(identity.New(c.peer), netip.Addr{}, ipproto.TCP, 80)
			if got := d.Action == Allow; got != c.want {
				t.Fatalf("selector %s, peer %v: allowed=%v, want %v", c.sel, c.peer, got, c.want)
			}
			// A peer without identity never matches a selector.
			if d := pu.Ingress(nil, netip.MustParseAddr("10.0.0.1"), ipproto.TCP, 80); d.Action != Deny {
				t.Fatalf("selector %s matched a peer without identity: %+v", c.sel, d)
			}
		})
	}
}

// TestPolicySelection: a PU's rules are the union of the policies whose
// selector matches the PU's tags; other policies do nothing.
func TestPolicySelection(t *testing.T) {
	e := mustEngine(t, `
policies:
  - name: web
    selector: app=web
    ingress: [{ports: [tcp/80], action: allow}]
  - name: prod
    selector: env=prod
    ingress: [{ports: [tcp/443], action: allow}]
  - name: not-legacy
    selector: "!legacy"
    ingress: [{ports: [tcp/22], action: allow}]
  - name: db
    selector: app=db
    ingress: [{action: allow}]
`)
	cases := []struct {
		pu       identity.Tags
		policies string
		open     []uint16
	}{
		{tags("app=web", "env=prod"), "web,prod,not-legacy", []uint16{80, 443, 22}},
		{tags("app=web", "legacy=1"), "web", []uint16{80}},
		{tags("app=db", "legacy=1"), "db", []uint16{80, 443, 22, 5432}},
		{tags("legacy=yes"), "", nil},
	}
	for _, c := range cases {
		pu := e.ForPU(c.pu)
		if got := strings.Join(pu.Policies(), ","); got != c.policies {
			t.Errorf("%v: policies %q, want %q", c.pu, got, c.policies)
		}
		for _, port := range []uint16{80, 443, 22, 5432} {
			want := false
			for _, p := range c.open {
				want = want || p == port
			}
			if got := pu.Ingress(identity.New(tags("x=y")), netip.Addr{}, ipproto.TCP, port).Action == Allow; got != want {
				t.Errorf("%v port %d: allowed=%v, want %v", c.pu, port, got, want)
			}
		}
	}
	if e.ForPU(tags("app=web", "env=prod")) != e.ForPU(tags("env=prod", "app=web", "x=1")) {
		t.Error("PUs selected by the same policies should share one PUPolicy")
	}
}

// TestPrecedence: reject beats allow, first rule in file order reports,
// observe modes.
func TestPrecedence(t *testing.T) {
	cases := []struct {
		name     string
		rules    string // ingress rules of one policy; a second policy "q" adds more
		action   Action
		rule     string
		observed string
		reason   reason.Code
		log      bool
	}{
		{"nothing matches", `[{ports: [udp/53], action: allow}]`, Deny, "-", "-", reason.PolicyDenied, false},
		{"no rules", `[]`, Deny, "-", "-", reason.PolicyDenied, false},
		{"allow", `[{action: allow}]`, Allow, "p/ingress/0", "-", reason.None, false},
		{"reject beats earlier allow", `[{action: allow}, {action: reject}]`, Reject, "p/ingress/1", "-", reason.PolicyRejected, false},
		{"reject beats later allow", `[{action: reject}, {action: allow, log: true}]`, Reject, "p/ingress/0", "-", reason.PolicyRejected, false},
		{"first allow reports", `[{action: allow}, {action: allow, log: true}]`, Allow, "p/ingress/0", "-", reason.None, false},
		{"first reject reports", `[{action: reject, log: true}, {action: reject}]`, Reject, "p/ingress/0", "-", reason.PolicyRejected, true},
		{"continue never decides", `[{action: allow, observe: continue}]`, Deny, "-", "p/ingress/0", reason.PolicyDenied, false},
		{"continue reject does not block", `[{action: allow}, {action: reject, observe: continue, log: true}]`, Allow, "p/ingress/0", "p/ingress/1", reason.None, true},
		{"apply decides when nothing enforced", `[{action: allow, observe: apply}]`, Allow, "p/ingress/0", "p/ingress/0", reason.None, false},
		{"apply reject decides when nothing enforced", `[{action: reject, observe: apply}]`, Reject, "p/ingress/0", "p/ingress/0", reason.PolicyRejected, false},
		{"enforced allow beats apply reject", `[{action: reject, observe: apply}, {action: allow}]`, Allow, "p/ingress/1", "p/ingress/0", reason.None, false},
		{"apply reject beats apply allow", `[{action: allow, observe: apply}, {action: reject, observe: apply}]`, Reject, "p/ingress/1", "p/ingress/1", reason.PolicyRejected, false},
		{"observed reject reported over observed allow", `[{action: allow, observe: continue}, {action: reject, observe: continue}]`, Deny, "-", "p/ingress/1", reason.PolicyDenied, false},
		{"apply allow decides, continue reject observed", `[{action: allow, observe: apply}, {action: reject, observe: continue, log: true}]`, Allow, "p/ingress/0", "p/ingress/1", reason.None, true},
		{"log of deciding rule", `[{action: allow, log: true}]`, Allow, "p/ingress/0", "-", reason.None, true},
		{"reject in other policy wins", `[{action: allow}]` + "\n  - name: q\n    selector: \"*\"\n    ingress: [{action: reject}]", Reject, "q/ingress/0", "-", reason.PolicyRejected, false},
		{"union of policies", `[{ports: [udp/53], action: allow}]` + "\n  - name: q\n    selector: \"*\"\n    ingress: [{ports: [tcp/80], action: allow}]", Allow, "q/ingress/0", "-", reason.None, false},
		{"policy not selecting PU", `[{action: allow}]` + "\n  - name: q\n    selector: app=other\n    ingress: [{action: reject}]", Allow, "p/ingress/0", "-", reason.None, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			e := mustEngine(t, "policies:\n  - name: p\n    selector: \"*\"\n    ingress: "+c.rules+"\n")
			pu := e.ForPU(tags("app=web"))
			for _, peer := range []*identity.Identity{nil, identity.New(tags("app=x"))} {
				d := pu.Ingress(peer, netip.MustParseAddr("10.0.0.1"), ipproto.TCP, 80)
				if d.Action != c.action || ref(d.Rule) != c.rule || ref(d.Observed) != c.observed || d.Reason != c.reason || d.Log != c.log {
					t.Fatalf("got %v rule %s observed %s reason %v log %v; want %v %s %s %v %v",
						d.Action, ref(d.Rule), ref(d.Observed), d.Reason, d.Log, c.action, c.rule, c.observed, c.reason, c.log)
				}
				// Egress of the same PU is untouched.
				if d := pu.Egress(peer, netip.MustParseAddr("10.0.0.1"), ipproto.TCP, 80); d.Action != Deny || d.Observed != nil {
					t.Fatalf("egress: %+v", d)
				}
			}
		})
	}
}

// TestCIDR: prefixes, overlaps, except, families, /0, /32, host addresses.
func TestCIDR(t *testing.T) {
	e := mustEngine(t, `
policies:
  - name: p
    selector: "*"
    egress:
      - name: ten
        to: [{cidr: 10.0.0.0/8, except: [10.9.0.0/16, 10.8.8.8]}]
        action: allow
      - name: ten-one
        to: [{cidr: 10.1.0.0/16}]
        action: reject
      - name: ten-one-two
        to: [{cidr: 10.1.2.0/24}]
        action: allow
      - name: host
        to: [{cidr: 192.168.1.1/32}]
        action: allow
      - name: v6
        to: [{cidr: "fd00::/8", except: ["fd00:bad::/32"]}]
        action: allow
      - name: v6-host
        to: [{cidr: "2001:db8::1/128"}]
        action: allow
      - name: all-v4-dns
        to: [{cidr: 0.0.0.0/0}]
        ports: [udp/53]
        action: allow
      - name: hole-refilled
        to: [{cidr: 10.9.9.0/24}]
        action: allow
`)
	pu := e.ForPU(identity.Tags{})
	cases := []struct {
		addr   string
		proto  ipproto.Proto
		port   uint16
		action Action
		rule   string
	}{
		{"10.2.3.4", ipproto.TCP, 80, Allow, "ten"},
		{"10.0.0.0", ipproto.TCP, 80, Allow, "ten"},
		{"10.255.255.255", ipproto.TCP, 80, Allow, "ten"},
		{"11.0.0.0", ipproto.TCP, 80, Deny, ""},
		{"9.255.255.255", ipproto.TCP, 80, Deny, ""},
		{"10.9.0.1", ipproto.TCP, 80, Deny, ""},               // except carves a hole
		{"10.9.9.9", ipproto.TCP, 80, Allow, "hole-refilled"}, // another rule fills it
		{"10.8.8.8", ipproto.TCP, 80, Deny, ""},               // bare address except = /32
		{"10.8.8.9", ipproto.TCP, 80, Allow, "ten"},
		{"10.1.0.1", ipproto.TCP, 80, Reject, "ten-one"}, // overlapping: reject beats allow
		{"10.1.2.3", ipproto.TCP, 80, Reject, "ten-one"}, // deeper allow does not beat reject
		{"192.168.1.1", ipproto.TCP, 80, Allow, "host"},
		{"192.168.1.2", ipproto.TCP, 80, Deny, ""},
		{"192.168.1.0", ipproto.TCP, 80, Deny, ""},
		{"192.168.1.2", ipproto.UDP, 53, Allow, "all-v4-dns"}, // /0
		{"255.255.255.255", ipproto.UDP, 53, Allow, "all-v4-dns"},
		{"0.0.0.0", ipproto.UDP, 53, Allow, "all-v4-dns"},
		{"::ffff:192.168.1.1", ipproto.TCP, 80, Allow, "host"}, // IPv4-mapped = IPv4
		{"fd12::1", ipproto.TCP, 80, Allow, "v6"},
		{"fd00:bad::1", ipproto.TCP, 80, Deny, ""},
		{"fdff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", ipproto.TCP, 80, Allow, "v6"},
		{"fe00::", ipproto.TCP, 80, Deny, ""},
		{"2001:db8::1", ipproto.TCP, 80, Allow, "v6-host"},
		{"2001:db8::2", ipproto.TCP, 80, Deny, ""},
		{"::", ipproto.UDP, 53, Deny, ""}, // 0.0.0.0/0 is IPv4 only
		{"::a00:1", ipproto.TCP, 80, Deny, ""},
	}
	for _, c := range cases {
		for _, peer := range []*identity.Identity{nil, identity.New(tags("app=x"))} {
			d := pu.Egress(peer, netip.MustParseAddr(c.addr), c.proto, c.port)
			name := ""
			if d.Rule != nil {
				name = d.Rule.Name
			}
			if d.Action != c.action || name != c.rule {
				t.Errorf("%s %v/%d (identity %v): %v by %q, want %v by %q", c.addr, c.proto, c.port, peer != nil, d.Action, name, c.action, c.rule)
			}
		}
	}
	if d := pu.Egress(nil, netip.Addr{}, ipproto.UDP, 53); d.Action != Deny {
		t.Errorf("no address matched a CIDR: %+v", d)
	}
}

// TestPorts: port ranges, protocol-only entries, ICMP, no ports.
func TestPorts(t *testing.T) {
	e := mustEngine(t, `
policies:
  - name: p
    selector: "*"
    ingress:
      - {name: http, ports: [tcp/80], action: allow}
      - {name: range, ports: [tcp/8000-8080], action: allow}
      - {name: dns, ports: [udp/53, tcp/53], action: allow}
      - {name: sctp, ports: [sctp/3868-3869], action: allow}
      - {name: icmp, ports: [icmp], action: allow}
      - {name: all-udp, from: [{cidr: 10.0.0.0/8}], ports: [udp], action: allow}
  - name: q
    selector: app=open
    ingress:
      - {name: everything, action: allow}
`)
	pu := e.ForPU(tags("app=web"))
	open := e.ForPU(tags("app=open"))
	far, near := netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("10.1.1.1")
	cases := []struct {
		addr  netip.Addr
		proto ipproto.Proto
		port  uint16
		rule  string
	}{
		{far, ipproto.TCP, 80, "http"},
		{far, ipproto.TCP, 79, ""},
		{far, ipproto.TCP, 81, ""},
		{far, ipproto.UDP, 80, ""},
		{far, ipproto.TCP, 7999, ""},
		{far, ipproto.TCP, 8000, "range"},
		{far, ipproto.TCP, 8042, "range"},
		{far, ipproto.TCP, 8080, "range"},
		{far, ipproto.TCP, 8081, ""},
		{far, ipproto.UDP, 53, "dns"},
		{far, ipproto.TCP, 53, "dns"},
		{far, ipproto.SCTP, 53, ""},
		{far, ipproto.SCTP, 3869, "sctp"},
		{far, ipproto.ICMP, 0, "icmp"},
		{far, ipproto.ICMPv6, 0, ""},
		{far, ipproto.UDP, 9999, ""},
		{near, ipproto.UDP, 9999, "all-udp"},
		{near, ipproto.UDP, 1, "all-udp"},
		{near, ipproto.UDP, 65535, "all-udp"},
		{near, ipproto.TCP, 9999, ""},
		{far, ipproto.Proto(47), 0, ""},
	}
	for _, c := range cases {
		d := pu.Ingress(nil, c.addr, c.proto, c.port)
		name := ""
		if d.Rule != nil {
			name = d.Rule.Name
		}
		if name != c.rule || (c.rule == "") != (d.Action == Deny) {
			t.Errorf("%v %v/%d: %v by %q, want %q", c.addr, c.proto, c.port, d.Action, name, c.rule)
		}
		if d := open.Ingress(nil, c.addr, c.proto, c.port); d.Action != Allow {
			t.Errorf("rule without ports: %v %v/%d: %v", c.addr, c.proto, c.port, d.Action)
		}
	}
}

// TestSelectorAndCIDRPeer: a rule whose peers are a selector and a CIDR
// matches a peer by either, and an identity peer is also matched by CIDR rules.
func TestSelectorAndCIDRPeer(t *testing.T) {
	e := mustEngine(t, `
policies:
  - name: p
    selector: "*"
    ingress:
      - name: both
        from: [{selector: app=web}, {cidr: 10.0.0.0/8}]
        ports: [tcp/80]
        action: allow
      - name: block-lab
        from: [{cidr: 10.66.0.0/16}]
        action: reject
`)
	pu := e.ForPU(identity.Tags{})
	web, db := identity.New(tags("app=web")), identity.New(tags("app=db"))
	cases := []struct {
		peer   *identity.Identity
		addr   string
		action Action
		rule   string
	}{
		{web, "192.0.2.1", Allow, "both"}, // by selector
		{db, "10.1.1.1", Allow, "both"},   // by CIDR
		{nil, "10.1.1.1", Allow, "both"},  // by CIDR, no identity
		{db, "192.0.2.1", Deny, ""},
		{nil, "192.0.2.1", Deny, ""},
		{web, "10.66.1.1", Reject, "block-lab"}, // selector allows, CIDR rejects: reject
		{nil, "10.66.1.1", Reject, "block-lab"},
	}
	for _, c := range cases {
		d := pu.Ingress(c.peer, netip.MustParseAddr(c.addr), ipproto.TCP, 80)
		name := ""
		if d.Rule != nil {
			name = d.Rule.Name
		}
		if d.Action != c.action || name != c.rule {
			t.Errorf("peer %v at %s: %v by %q, want %v by %q", c.peer != nil, c.addr, d.Action, name, c.action, c.rule)
		}
	}
}

func TestTargetAndExcluded(t *testing.T) {
	e := mustEngine(t, `
targetNetworks: [10.0.0.0/16, "fd00:10::/64"]
excludedNetworks: [10.0.255.0/24]
---
targetNetworks: [172.16.0.0/12]
`)
	cases := []struct {
		addr             string
		target, excluded bool
	}{
		{"10.0.1.1", true, false},
		{"10.0.255.9", true, true},
		{"10.1.0.1", false, false},
		{"172.20.0.1", true, false},
		{"::ffff:10.0.1.1", true, false},
		{"fd00:10::5", true, false},
		{"fd00:11::5", false, false},
	}
	for _, c := range cases {
		a := netip.MustParseAddr(c.addr)
		if e.IsTarget(a) != c.target || e.IsExcluded(a) != c.excluded {
			t.Errorf("%s: target %v excluded %v, want %v %v", c.addr, e.IsTarget(a), e.IsExcluded(a), c.target, c.excluded)
		}
	}
	if e.IsTarget(netip.Addr{}) || e.IsExcluded(netip.Addr{}) {
		t.Error("the zero address is in no network")
	}
}

// TestRuleRefs: decisions point at the rule with its policy, name and place.
func TestRuleRefs(t *testing.T) {
	e := mustEngine(t, `policies:
  - name: web
    selector: app=web
    egress:
      - name: to-db
        to: [{selector: app=db}]
        ports: [tcp/5432]
        action: allow
        log: true
`)
	d := e.ForPU(tags("app=web")).Egress(identity.New(tags("app=db")), netip.Addr{}, ipproto.TCP, 5432)
	want := RuleRef{Policy: "web", Direction: Egress, Index: 0, Name: "to-db", Action: Allow, Log: true,
		Pos: Position{File: "test.yaml", Line: 5, Column: 9}}
	if d.Rule == nil || *d.Rule != want || !d.Log {
		t.Fatalf("rule %+v, want %+v", d.Rule, want)
	}
}

// TestCompileRefusesForeignSelectors: a Selector not built by this package
// would compile to "match everything"; Compile must refuse it.
func TestCompileRefusesBadSets(t *testing.T) {
	good, _ := ParseSelector("app=web")
	bad := &Selector{Text: good.Text, reqs: good.reqs} // not built by this package
	for name, s := range map[string]*Set{
		"foreign selector": {Policies: []Policy{{Name: "p", Selector: bad}}},
		"nil selector":     {Policies: []Policy{{Name: "p"}}},
		"zero selector":    {Policies: []Policy{{Name: "p", Selector: &Selector{}}}},
		"zero peer":        {Policies: []Policy{{Name: "p", Selector: good, Egress: []Rule{{Action: Allow, Peers: []Peer{{Selector: &Selector{Text: "x"}}}}}}}},
		"duplicate":        {Policies: []Policy{{Name: "p", Selector: good}, {Name: "p", Selector: good}}},
		"peer both":        {Policies: []Policy{{Name: "p", Selector: good, Ingress: []Rule{{Action: Allow, Peers: []Peer{{Selector: good, CIDR: netip.MustParsePrefix("10.0.0.0/8")}}}}}}},
		"deny action":      {Policies: []Policy{{Name: "p", Selector: good, Ingress: []Rule{{Action: Deny}}}}},
	} {
		if _, err := Compile(s); err == nil {
			t.Errorf("%s: compiled", name)
		}
	}
}

// TestConcurrentUse exercises ForPU, NewIdentity and decisions from many
// goroutines (run with -race).
func TestConcurrentUse(t *testing.T) {
	s, err := Load("../examples/policy.yaml")
	if err != nil {
		t.Fatal(err)
	}
	e, err := Compile(s)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			for i := 0; i < 200; i++ {
				web := e.ForPU(tags("app=web", "env=prod", fmt.Sprintf("n=%d", i%7)))
				fe := identity.New(tags("app=frontend", fmt.Sprintf("g=%d-%d", g, i)))
				if d := web.Ingress(fe, netip.Addr{}, ipproto.TCP, 80); d.Action != Allow {
					t.Errorf("frontend -> web:80 = %v", d.Action)
					return
				}
			}
		}(g)
	}
	wg.Wait()
}
