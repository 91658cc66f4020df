package attacks

import (
	"net/netip"
	"testing"
	"time"

	"github.com/trireme-go/trireme/testenv"
)

// basePolicy is a small three-tier application on the node subnet
// (10.77.0.0/24, fd00:77::/64): frontend -> web:80 -> db:5432; the
// attacker PU is allowed nothing but its own egress to the internet;
// 10.77.255.0/24 is excluded (node monitoring); db accepts UDP/5353 from
// the external admin network 192.168.100.0/24 only.
const basePolicy = `targetNetworks: [10.77.0.0/16, fd00:77::/64]
excludedNetworks: [10.77.255.0/24]
policies:
  - name: frontend
    selector: app=frontend
    egress:
      - {name: to-web, to: [{selector: app=web}], ports: [tcp/80], action: allow}
  - name: web
    selector: app=web
    ingress:
      - {name: from-frontend, from: [{selector: app=frontend}], ports: [tcp/80], action: allow}
    egress:
      - {name: to-db, to: [{selector: app=db}], ports: [tcp/5432], action: allow}
  - name: db
    selector: app=db
    ingress:
      - {name: from-web, from: [{selector: app=web}], ports: [tcp/5432], action: allow}
      - {name: admin-udp, from: [{cidr: 192.168.100.0/24}], ports: [udp/5353], action: allow}
  - name: attacker
    selector: app=attacker
    egress:
      - {name: internet, to: [{cidr: 0.0.0.0/0}, {cidr: "::/0"}], action: allow}
`

// scene is one node running the daemon with four PUs: frontend, web, db
// and attacker (the PU an adversary controls).
type scene struct {
	t        *testing.T
	node     *testenv.Node
	d        *testenv.Daemon
	frontend *testenv.PU
	web      *testenv.PU
	db       *testenv.PU
	attacker *testenv.PU
}

type sceneOptions struct {
	Policy string // default basePolicy
	PSK    bool   // default PKI, as an operator deploys it
	Extra  string // more daemon config (YAML)
}

func newScene(t *testing.T, opts sceneOptions) *scene {
	t.Helper()
	if opts.Policy == "" {
		opts.Policy = basePolicy
	}
	n := testenv.NewNode(t, testenv.NodeOptions{PUs: 4})
	do := testenv.DaemonOptions{Policy: opts.Policy, Extra: opts.Extra}
	if opts.PSK {
		do.SecretsDir = testenv.PSKDir(t)
	} else {
		do.PKI, do.SecretsDir = true, testenv.CADir(t)
	}
	d := testenv.NewDaemon(t, n, do)
	d.Start()
	s := &scene{t: t, node: n, d: d, frontend: n.PUs[0], web: n.PUs[1], db: n.PUs[2], attacker: n.PUs[3]}
	d.Attach(s.frontend, "app=frontend")
	d.Attach(s.web, "app=web")
	d.Attach(s.db, "app=db")
	d.Attach(s.attacker, "app=attacker")
	return s
}

// drops returns the daemon's drop counters by reason name.
func (s *scene) drops() map[string]uint64 {
	s.t.Helper()
	st, err := s.d.Client().Stats()
	if err != nil {
		s.t.Fatalf("stats: %v", err)
	}
	return st.Drops
}

// waitDrop waits (up to 5 s) until the drop counter of reason has grown past
// before[reason], and fails the test otherwise.
func (s *scene) waitDrop(before map[string]uint64, reason string) {
	s.t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		now := s.drops()
		if now[reason] > before[reason] {
			return
		}
		if time.Now().After(deadline) {
			s.t.Fatalf("no %q drop counted (before %v, now %v)", reason, before, now)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// established opens an allowed connection web -> db:5432 (echo) and checks
// it works; the connection is closed by t.Cleanup.
func (s *scene) established() (conn interface{ Close() error }, client, server netip.AddrPort) {
	s.t.Helper()
	srv := s.db.ServeEcho(5432)
	c, err := s.web.Dial(srv, 3*time.Second)
	if err != nil {
		s.t.Fatalf("web -> db:5432 (allowed): %v", err)
	}
	s.t.Cleanup(func() { c.Close() })
	if err := testenv.EchoConn(c, "hello", 3*time.Second); err != nil {
		s.t.Fatalf("web -> db:5432 echo: %v", err)
	}
	return c, netip.MustParseAddrPort(c.LocalAddr().String()), srv
}
