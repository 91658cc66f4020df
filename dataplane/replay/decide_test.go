package replay

import (
	"bytes"
	"fmt"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"

	"github.com/trireme-go/trireme/dataplane"
	"github.com/trireme-go/trireme/identity"
	"github.com/trireme-go/trireme/ipproto"
	"github.com/trireme-go/trireme/policy"
)

// decideCrossPolicy: PUs by identity, network and application ACLs, target
// and excluded networks (policy.TestDecide uses the same rules).
const decideCrossPolicy = `
targetNetworks: [10.0.0.0/16]
excludedNetworks: [10.0.255.0/24]
policies:
  - name: frontend
    selector: app=frontend
    ingress:
      - name: public-https
        from: [{cidr: 0.0.0.0/0}]
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
        ports: [udp/5353, icmp]
        action: allow
  - name: reports
    selector: app=reports
    egress:
      - name: to-db
        to: [{selector: app=db}]
        action: allow
`

// TestDecideMatchesEnforcers holds policy.Engine.Decide (what `policy
// explain`, `k8s reach` and the offline demo print) to the enforcers: every
// ordered pair of endpoints (PUs, external hosts, a host of the target
// networks without an enforcer, an excluded host, a PU holding an excluded
// address, a PU outside the target networks) opens a TCP connection, a UDP,
// ICMP or SCTP flow on each port through the real enforcers of a replay, and the
// outcome (delivered or not), the enforcer that refused, its reason, action
// and rule, and the rules of both sides when allowed must be what Decide
// says.
func TestDecideMatchesEnforcers(t *testing.T) {
	set := mustPolicy(t, decideCrossPolicy)
	eng, err := policy.Compile(set)
	if err != nil {
		t.Fatal(err)
	}
	type host struct {
		name string
		addr netip.Addr
		tags map[string]string // nil: no enforcer
	}
	hosts := []host{
		{"frontend", netip.MustParseAddr("10.0.1.10"), map[string]string{"app": "frontend"}},
		{"frontend-dev", netip.MustParseAddr("10.0.1.11"), map[string]string{"app": "frontend", "env": "dev"}},
		{"web", netip.MustParseAddr("10.0.2.10"), map[string]string{"app": "web"}},
		{"db", netip.MustParseAddr("10.0.3.10"), map[string]string{"app": "db"}},
		{"reports", netip.MustParseAddr("10.0.4.10"), map[string]string{"app": "reports"}},
		{"web-excluded", netip.MustParseAddr("10.0.255.10"), map[string]string{"app": "web"}},
		{"frontend-outside", netip.MustParseAddr("192.0.2.80"), map[string]string{"app": "frontend"}},
		{"admin", netip.MustParseAddr("192.168.0.5"), nil},
		{"kiosk", netip.MustParseAddr("192.168.0.66"), nil},
		{"dns", netip.MustParseAddr("198.51.100.53"), nil},
		{"legacy", netip.MustParseAddr("10.0.9.9"), nil},
		{"monitor", netip.MustParseAddr("10.0.255.9"), nil},
	}
	topo := &Topology{}
	for _, h := range hosts {
		if h.tags != nil {
			topo.PUs = append(topo.PUs, PUSpec{Name: h.name, Node: "node-" + h.name, IPs: []netip.Addr{h.addr}, Tags: identity.NewTags(h.tags)})
		}
	}
	// The dataplane reads no SCTP ports: an SCTP flow between two hosts is
	// one flow both ways (what one direction decided, the other meets). Each
	// direction of a pair gets its own replay.
	var reps [2]*Replayer
	var outs [2]*memOut
	for i := range reps {
		outs[i] = &memOut{}
		r, err := New(Options{Topology: topo, Policy: set, Out: outs[i]})
		if err != nil {
			t.Fatal(err)
		}
		reps[i] = r
	}
	endpoint := func(h host) policy.Endpoint {
		if h.tags == nil {
			return policy.Host(h.addr)
		}
		return eng.PU(identity.NewTags(h.tags), h.addr)
	}
	now := time.Date(2026, 12, 3, 12, 0, 0, 0, time.UTC)
	idx := 0
	r := reps[0]
	send := func(f []byte) bool {
		before := r.sum.Forwarded
		r.Packet(idx, now, f)
		idx++
		now = now.Add(100 * time.Microsecond)
		return r.sum.Forwarded > before
	}
	type conn struct {
		client, server host
		proto          ipproto.Proto
		port           uint16
		reached        bool // the last packet of the exchange got through
	}
	var conns []conn
	cport := uint16(20000)
	for _, c := range hosts {
		for _, s := range hosts {
			if c.name == s.name || c.tags == nil && s.tags == nil {
				continue
			}
			for _, p := range []struct {
				proto ipproto.Proto
				port  uint16
			}{{ipproto.TCP, 80}, {ipproto.TCP, 8085}, {ipproto.TCP, 443}, {ipproto.TCP, 22},
				{ipproto.TCP, 5432}, {ipproto.UDP, 53}, {ipproto.UDP, 5353}, {ipproto.ICMP, 0},
				{ipproto.SCTP, 3868}} {
				cport++
				cn := conn{client: c, server: s, proto: p.proto, port: p.port}
				r = reps[0]
				if p.proto == ipproto.SCTP && c.name > s.name {
					r = reps[1]
				}
				switch p.proto {
				case ipproto.UDP:
					cn.reached = send(udpTo(t, c.addr, s.addr, cport, p.port))
				case ipproto.ICMP:
					cn.reached = send(frameOf(t, c.addr, s.addr, ipv4(c.addr, s.addr, layers.IPProtocolICMPv4),
						&layers.ICMPv4{TypeCode: layers.CreateICMPv4TypeCode(layers.ICMPv4TypeEchoRequest, 0), Id: cport, Seq: 1}))
				case ipproto.SCTP:
					cn.reached = send(frameOf(t, c.addr, s.addr, ipv4(c.addr, s.addr, layers.IPProtocolSCTP),
						&layers.SCTP{SrcPort: layers.SCTPPort(cport), DstPort: layers.SCTPPort(p.port)}))
				default:
					seg := func(src, dst netip.Addr, sp, dp uint16, syn, ack bool, seq, ackN uint32) []byte {
						return tcpTo(t, src, dst, sp, dp, syn, ack, seq, ackN)
					}
					// The server answers only a SYN that reached it; the
					// client's kernel ACKs only a SYN-ACK that reached it.
					cn.reached = send(seg(c.addr, s.addr, cport, p.port, true, false, 1000, 0)) &&
						send(seg(s.addr, c.addr, p.port, cport, true, true, 5000, 1001)) &&
						send(seg(c.addr, s.addr, cport, p.port, false, true, 1001, 5001))
				}
				conns = append(conns, cn)
			}
		}
	}
	for _, r := range reps {
		r.Finish()
	}
	// Records by connection: TCP and UDP by client port; ICMP and SCTP (one
	// flow per pair; the dataplane reads no ports of theirs) by addresses.
	type recKey struct {
		client, server netip.Addr
		proto          ipproto.Proto
		port           uint16
	}
	keyOf := func(client, server netip.Addr, proto ipproto.Proto, port uint16) recKey {
		if !proto.HasPorts() {
			port = 0
		}
		return recKey{client, server, proto, port}
	}
	recs := map[recKey][]dataplane.Record{}
	for _, rec := range append(outs[0].records, outs[1].records...) {
		k := keyOf(rec.Client.Addr(), rec.Server.Addr(), rec.Proto, rec.Client.Port())
		recs[k] = append(recs[k], rec)
	}
	allowed, denied := 0, 0
	for i, cn := range conns {
		port := keyOf(cn.client.addr, cn.server.addr, cn.proto, uint16(20001+i))
		d := eng.Decide(policy.Conn{Client: endpoint(cn.client), Server: endpoint(cn.server), Proto: cn.proto, Port: cn.port})
		what := fmt.Sprintf("%s -> %s %s/%d", cn.client.name, cn.server.name, cn.proto, cn.port)
		if cn.reached != d.Allowed() {
			t.Errorf("%s: enforcers let it through %v, Decide %v (%+v)", what, cn.reached, d.Allowed(), d)
			continue
		}
		// One record per enforcer that checked the connection, saying what
		// its half says.
		halves := map[string]*policy.Half{"ingress": &d.Ingress, "egress": &d.Egress}
		checked := 0
		for _, h := range halves {
			if h.Checked() {
				checked++
			}
		}
		if d.Allowed() {
			allowed++
			if len(recs[port]) != checked {
				t.Errorf("%s: %d records, want %d (one per enforcer that checked): %+v", what, len(recs[port]), checked, recs[port])
			}
			for _, rec := range recs[port] {
				h := halves[rec.Direction]
				if rec.Action != "allow" || ruleName(rec.Rule) != refName(h.Rule) {
					t.Errorf("%s: %s record %s by %s, Decide %s by %s", what, rec.Direction, rec.Action, ruleName(rec.Rule), h.Action, refName(h.Rule))
				}
			}
			continue
		}
		denied++
		// The enforcer that refused first recorded the denial with the
		// half's reason and rule; a later one never saw the connection,
		// except a UDP client's, whose handshake then goes unanswered: it
		// records its own half's denial (missing-token) after its retries.
		want := map[policy.Party]string{policy.ServerIngress: "ingress", policy.ClientEgress: "egress"}[d.DecidedBy]
		h := halves[want]
		var got *dataplane.Record
		for j := range recs[port] {
			rec := &recs[port][j]
			if rec.End != dataplane.EndDenied {
				continue
			}
			if rec.Direction != want {
				other := halves[rec.Direction]
				if cn.proto != ipproto.UDP || rec.Direction != "egress" || other.Allowed() || rec.Reason != other.Reason.String() {
					t.Errorf("%s: two denial records: %+v", what, recs[port])
				}
				continue
			}
			if got != nil {
				t.Errorf("%s: two denial records: %+v", what, recs[port])
			}
			got = rec
		}
		if got == nil {
			t.Errorf("%s: no denial record (Decide: %s refuses, %v): %+v", what, want, d.Reason, recs[port])
			continue
		}
		if got.Direction != want || got.Reason != d.Reason.String() || got.Action != d.Action.String() || ruleName(got.Rule) != refName(h.Rule) {
			t.Errorf("%s: denied by %s: %s %s rule %s; Decide: %s %s %s rule %s", what, got.Direction, got.Action, got.Reason, ruleName(got.Rule),
				want, d.Action, d.Reason, refName(h.Rule))
		}
	}
	// The table must exercise both outcomes and every way to decide.
	if allowed < 20 || denied < 20 {
		t.Errorf("%d allowed, %d denied: the table is too one-sided", allowed, denied)
	}
	t.Logf("%d connections: %d allowed, %d denied, as Decide says", len(conns), allowed, denied)
}

func ruleName(r *dataplane.RuleInfo) string {
	if r == nil {
		return "-"
	}
	return r.Policy + "/" + r.Name
}

func refName(r *policy.RuleRef) string {
	if r == nil {
		return "-"
	}
	return r.Policy + "/" + r.Name
}

func macFor(a netip.Addr) net.HardwareAddr {
	b := a.As16()
	return net.HardwareAddr{2, 0, b[12], b[13], b[14], b[15]}
}

func ipv4(src, dst netip.Addr, proto layers.IPProtocol) *layers.IPv4 {
	return &layers.IPv4{Version: 4, TTL: 64, Protocol: proto, SrcIP: src.AsSlice(), DstIP: dst.AsSlice()}
}

func tcpTo(t *testing.T, src, dst netip.Addr, sport, dport uint16, syn, ack bool, seq, ackN uint32) []byte {
	t.Helper()
	ip := &layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocolTCP, SrcIP: src.AsSlice(), DstIP: dst.AsSlice(), Flags: layers.IPv4DontFragment}
	tcp := &layers.TCP{SrcPort: layers.TCPPort(sport), DstPort: layers.TCPPort(dport), Seq: seq, Ack: ackN, Window: 502, SYN: syn, ACK: ack}
	if syn {
		tcp.Options = []layers.TCPOption{{OptionType: layers.TCPOptionKindMSS, OptionLength: 4, OptionData: []byte{5, 0xb4}}}
	}
	tcp.SetNetworkLayerForChecksum(ip)
	return frameOf(t, src, dst, ip, tcp)
}

func udpTo(t *testing.T, src, dst netip.Addr, sport, dport uint16) []byte {
	t.Helper()
	ip := &layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocolUDP, SrcIP: src.AsSlice(), DstIP: dst.AsSlice()}
	udp := &layers.UDP{SrcPort: layers.UDPPort(sport), DstPort: layers.UDPPort(dport)}
	udp.SetNetworkLayerForChecksum(ip)
	return frameOf(t, src, dst, ip, udp, gopacket.Payload("query"))
}

func frameOf(t *testing.T, src, dst netip.Addr, ls ...gopacket.SerializableLayer) []byte {
	t.Helper()
	eth := &layers.Ethernet{SrcMAC: macFor(src), DstMAC: macFor(dst), EthernetType: layers.EthernetTypeIPv4}
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, append([]gopacket.SerializableLayer{eth}, ls...)...); err != nil {
		t.Fatal(err)
	}
	return bytes.Clone(buf.Bytes())
}
