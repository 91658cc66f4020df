package policy

import (
	"fmt"
	"net/netip"
	"testing"

	"github.com/trireme-go/trireme/identity"
	"github.com/trireme-go/trireme/ipproto"
)

// decidePolicy: a frontend, web and db, one reporting job, an admin network
// and external DNS; 10.0.0.0/16 runs enforcers, 10.0.255.0/24 is excluded.
const decidePolicy = `
targetNetworks: [10.0.0.0/16, fd00:10::/64]
excludedNetworks: [10.0.255.0/24]
policies:
  - name: frontend
    selector: app=frontend
    ingress:
      - name: public-https
        from: [{cidr: 0.0.0.0/0}, {cidr: "::/0"}]
        ports: [tcp/443]
        action: allow
    egress:
      - name: to-web
        to: [{selector: app=web}]
        ports: [tcp/80, tcp/8080-8090, udp/53]
        action: allow
      - name: dns
        to: [{cidr: 198.51.100.0/24}]
        ports: [udp/53, icmp, sctp/3868]
        action: allow
  - name: web
    selector: app=web
    ingress:
      - name: from-frontend
        from: [{selector: "app in (frontend, reports)"}]
        ports: [tcp/80, tcp/8080-8081, udp/53]
        action: allow
      - name: no-dev
        from: [{selector: env=dev}]
        action: reject
      - name: admin-ssh
        from: [{cidr: 192.168.0.0/24, except: [192.168.0.66/32]}]
        ports: [tcp/22]
        action: allow
    egress:
      - name: to-db
        to: [{selector: app=db}]
        ports: [tcp/5432]
        action: allow
  - name: db
    selector: app=db
    ingress:
      - name: from-web
        from: [{selector: app=web}]
        ports: [tcp/5432]
        action: allow
      - name: from-net
        from: [{cidr: 10.0.0.0/16}]
        ports: [udp/5353]
        action: allow
  - name: reports
    selector: app=reports
    egress:
      - name: to-db
        to: [{selector: app=db}]
        action: allow
`

// TestDecide holds Engine.Decide to the dataplane's semantics (docs/policy.md;
// the replay cross-check in dataplane/replay holds it to the enforcers
// themselves): both directions, PU to PU by identity, external hosts by
// CIDR, missing tokens, excluded networks, ports, ranges and protocols,
// reject and deny, and which enforcer refuses first.
func TestDecide(t *testing.T) {
	set, err := Parse("decide.yaml", []byte(decidePolicy))
	if err != nil {
		t.Fatal(err)
	}
	e, err := Compile(set)
	if err != nil {
		t.Fatal(err)
	}
	a := netip.MustParseAddr
	pu := func(app, ip string) Endpoint {
		var addr netip.Addr
		if ip != "" {
			addr = a(ip)
		}
		return e.PU(identity.NewTags(map[string]string{"app": app}), addr)
	}
	frontend, web, db, reports := pu("frontend", "10.0.1.10"), pu("web", "10.0.2.10"), pu("db", "10.0.3.10"), pu("reports", "10.0.4.10")
	devFrontend := e.PU(identity.NewTags(map[string]string{"app": "frontend", "env": "dev"}), a("10.0.1.11"))
	noAddr := pu("frontend", "")
	webNoAddr := pu("web", "")
	webExcluded := pu("web", "10.0.255.10")         // a PU that took an excluded address
	frontendOutside := pu("frontend", "192.0.2.80") // a PU outside the target networks
	web6, frontend6 := pu("web", "fd00:10::2"), pu("frontend", "fd00:10::1")
	admin, kiosk := Host(a("192.168.0.5")), Host(a("192.168.0.66"))
	dns, legacy, monitor := Host(a("198.51.100.53")), Host(a("10.0.9.9")), Host(a("10.0.255.9"))
	linkLocal := Host(a("fe80::1"))

	cases := []struct {
		name           string
		client, server Endpoint
		port           string // tcp/80, udp/53, icmp
		intent         bool   // AllProtocolsCarryIdentity
		ingress        string // basis/action/rule of the server's half
		egress         string // likewise, the client's
		verdict        string // action, or action/decidedBy/reason
	}{
		// PU to PU over TCP: both enforcers, by identity.
		{"allowed both ways", frontend, web, "tcp/80", false, "identity/allow/from-frontend", "identity/allow/to-web", "allow"},
		{"port range", frontend, web, "tcp/8081", false, "identity/allow/from-frontend", "identity/allow/to-web", "allow"},
		{"denied by ingress (past the range)", frontend, web, "tcp/8085", false, "identity/deny/-", "identity/allow/to-web", "deny/server-ingress/policy-denied"},
		{"denied by egress", reports, web, "tcp/80", false, "identity/allow/from-frontend", "identity/deny/-", "deny/client-egress/policy-denied"},
		{"denied by ingress, other way", reports, db, "tcp/5432", false, "identity/deny/-", "identity/allow/to-db", "deny/server-ingress/policy-denied"},
		{"the reverse connection is decided on its own", web, frontend, "tcp/80", false, "identity/deny/-", "identity/deny/-", "deny/server-ingress/policy-denied"},
		{"reject beats allow", devFrontend, web, "tcp/80", false, "identity/reject/no-dev", "identity/allow/to-web", "reject/server-ingress/policy-rejected"},
		{"reject on any port", devFrontend, web, "tcp/9999", false, "identity/reject/no-dev", "identity/deny/-", "reject/server-ingress/policy-rejected"},
		{"protocol: udp rule does not allow tcp", frontend, db, "tcp/53", false, "identity/deny/-", "identity/deny/-", "deny/server-ingress/policy-denied"},
		{"unknown addresses are inside", noAddr, webNoAddr, "tcp/80", false, "identity/allow/from-frontend", "identity/allow/to-web", "allow"},
		{"IPv6", frontend6, web6, "tcp/80", false, "identity/allow/from-frontend", "identity/allow/to-web", "allow"},

		// External hosts: network ACLs (ingress) and application ACLs (egress).
		{"network ACL", admin, web, "tcp/22", false, "address/allow/admin-ssh", "no-enforcer/allow/-", "allow"},
		{"network ACL except", kiosk, web, "tcp/22", false, "address/deny/-", "no-enforcer/allow/-", "deny/server-ingress/policy-denied"},
		{"network ACL other port", admin, web, "tcp/23", false, "address/deny/-", "no-enforcer/allow/-", "deny/server-ingress/policy-denied"},
		{"application ACL udp", frontend, dns, "udp/53", false, "no-enforcer/allow/-", "address/allow/dns", "allow"},
		{"application ACL icmp", frontend, dns, "icmp", false, "no-enforcer/allow/-", "address/allow/dns", "allow"},
		{"application ACL: tcp not listed", frontend, dns, "tcp/53", false, "no-enforcer/allow/-", "address/deny/-", "deny/client-egress/policy-denied"},
		{"application ACL: other udp port", frontend, dns, "udp/54", false, "no-enforcer/allow/-", "address/deny/-", "deny/client-egress/policy-denied"},
		{"external client of a public port", dns, frontend, "tcp/443", false, "address/allow/public-https", "no-enforcer/allow/-", "allow"},

		// Target networks: a host there without an enforcer has no token.
		{"missing token in the SYN", legacy, web, "tcp/80", false, "no-token/deny/-", "no-enforcer/allow/-", "deny/server-ingress/missing-token"},
		{"missing token in the SYN-ACK", web, legacy, "tcp/80", false, "no-enforcer/allow/-", "no-token/deny/-", "deny/client-egress/missing-token"},
		{"link-local is inside", linkLocal, frontend, "tcp/443", false, "no-token/deny/-", "no-enforcer/allow/-", "deny/server-ingress/missing-token"},
		// A PU outside the target networks: its peer adds no token toward it
		// and decides on its address, first (on the SYN).
		{"PU outside the target networks", web, frontendOutside, "tcp/443", false, "no-token/deny/-", "address/deny/-", "deny/client-egress/policy-denied"},

		// Excluded networks: the peer's side only.
		{"excluded client", monitor, db, "tcp/5432", false, "peer-excluded/allow/-", "no-enforcer/allow/-", "allow"},
		{"excluded server", frontend, monitor, "tcp/80", false, "no-enforcer/allow/-", "peer-excluded/allow/-", "allow"},
		// A PU holding an excluded address is still checked; its peer lets
		// it through without a token, so the SYN-ACK it gets carries none.
		{"PU with an excluded address", webExcluded, frontend, "tcp/443", false, "peer-excluded/allow/-", "no-token/deny/-", "deny/client-egress/missing-token"},

		// Datagram flows carry no identity: by address, the client first.
		// UDP carries identity live (the datagram handshake).
		{"udp between PUs: selectors match", frontend, web, "udp/53", false, "identity/allow/from-frontend", "identity/allow/to-web", "allow"},
		{"udp between PUs, as intended", frontend, web, "udp/53", true, "identity/allow/from-frontend", "identity/allow/to-web", "allow"},
		{"udp with an address rule in the target networks", web, db, "udp/5353", false, "identity/allow/from-net", "identity/deny/-", "deny/client-egress/policy-denied"},
		{"udp from a host without enforcer: missing-token", legacy, db, "udp/5353", false, "no-token/deny/-", "no-enforcer/allow/-", "deny/server-ingress/missing-token"},
		{"udp from a host without enforcer, as intended", legacy, db, "udp/5353", true, "no-token/deny/-", "no-enforcer/allow/-", "deny/server-ingress/missing-token"},
		// The dataplane reads the ports of TCP and UDP only.
		{"sctp port rules do not match live", frontend, dns, "sctp/3868", false, "no-enforcer/allow/-", "address/deny/-", "deny/client-egress/policy-denied"},
		{"sctp port rules, as intended", frontend, dns, "sctp/3868", true, "no-enforcer/allow/-", "address/allow/dns", "allow"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			pr, err := ParsePortRange(c.port)
			if err != nil {
				t.Fatal(err)
			}
			d := e.Decide(Conn{Client: c.client, Server: c.server, Proto: pr.Protocol, Port: pr.First, AllProtocolsCarryIdentity: c.intent})
			if got := halfString(&d.Ingress); got != c.ingress {
				t.Errorf("server ingress %s, want %s", got, c.ingress)
			}
			if got := halfString(&d.Egress); got != c.egress {
				t.Errorf("client egress %s, want %s", got, c.egress)
			}
			got := d.Action.String()
			if d.DecidedBy != Nobody {
				got += "/" + d.DecidedBy.String() + "/" + d.Reason.String()
			}
			if got != c.verdict || d.Allowed() != (c.verdict == "allow") {
				t.Errorf("verdict %s, want %s", got, c.verdict)
			}
			// A PU's half names the policies selecting it, a host's none.
			for _, h := range []struct {
				ep   Endpoint
				half *Half
			}{{c.server, &d.Ingress}, {c.client, &d.Egress}} {
				if h.ep.IsPU() != (h.half.Policies != nil) || h.ep.IsPU() != (h.half.Basis != NoEnforcer) {
					t.Errorf("PU %v: policies %v, basis %v", h.ep.IsPU(), h.half.Policies, h.half.Basis)
				}
			}
		})
	}
}

// An endpoint prepared by another engine decides by this engine's rules.
func TestDecideForeignEndpoint(t *testing.T) {
	other, err := Compile(&Set{})
	if err != nil {
		t.Fatal(err)
	}
	set, err := Parse("decide.yaml", []byte(decidePolicy))
	if err != nil {
		t.Fatal(err)
	}
	e, err := Compile(set)
	if err != nil {
		t.Fatal(err)
	}
	tags := func(app string) identity.Tags { return identity.NewTags(map[string]string{"app": app}) }
	client, server := other.PU(tags("frontend"), netip.Addr{}), other.PU(tags("web"), netip.Addr{})
	if d := other.Decide(Conn{Client: client, Server: server, Proto: ipproto.TCP, Port: 80}); d.Allowed() {
		t.Fatal("the empty policy allows")
	}
	if d := e.Decide(Conn{Client: client, Server: server, Proto: ipproto.TCP, Port: 80}); !d.Allowed() || d.Ingress.Rule.Name != "from-frontend" {
		t.Fatalf("decided with the other engine's rules: %+v", d)
	}
}

func halfString(h *Half) string {
	rule := "-"
	if h.Rule != nil {
		rule = h.Rule.Name
	}
	return fmt.Sprintf("%s/%s/%s", h.Basis, h.Action, rule)
}

// BenchmarkDecideConn: one connection between two prepared PUs (a reach matrix
// cell); ForPU and NewIdentity are done once, by Engine.PU.
func BenchmarkDecideConn(b *testing.B) {
	set, err := Parse("decide.yaml", []byte(decidePolicy))
	if err != nil {
		b.Fatal(err)
	}
	e, err := Compile(set)
	if err != nil {
		b.Fatal(err)
	}
	c := Conn{Client: e.PU(identity.NewTags(map[string]string{"app": "frontend"}), netip.MustParseAddr("10.0.1.10")),
		Server: e.PU(identity.NewTags(map[string]string{"app": "web"}), netip.MustParseAddr("10.0.2.10")), Proto: ipproto.TCP, Port: 80}
	b.ReportAllocs()
	for b.Loop() {
		if d := e.Decide(c); !d.Allowed() {
			b.Fatal("denied")
		}
	}
}
