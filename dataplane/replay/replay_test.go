package replay

import (
	"bytes"
	"fmt"
	"net/netip"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/trireme-go/trireme/dataplane"
	"github.com/trireme-go/trireme/dataplane/fixtures"
	"github.com/trireme-go/trireme/dataplane/packet"
	"github.com/trireme-go/trireme/dataplane/pcapio"
	"github.com/trireme-go/trireme/identity"
	"github.com/trireme-go/trireme/ipproto"
	"github.com/trireme-go/trireme/policy"
	"github.com/trireme-go/trireme/reason"
)

type captured struct {
	t     time.Time
	frame []byte
}

func load(t testing.TB, path string) []captured {
	t.Helper()
	ps, err := pcapio.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	out := make([]captured, len(ps))
	for i, p := range ps {
		out[i] = captured{p.Time, p.Frame}
	}
	return out
}

type delivery struct {
	pu     string
	frame  []byte
	origin int
}

type memOut struct {
	wire      [][]byte
	delivered []delivery
	records   []dataplane.Record
}

func (m *memOut) Wire(_ time.Time, f []byte) { m.wire = append(m.wire, bytes.Clone(f)) }
func (m *memOut) Delivered(pu string, _ time.Time, f []byte, origin int) {
	m.delivered = append(m.delivered, delivery{pu, bytes.Clone(f), origin})
}
func (m *memOut) Record(r *dataplane.Record) { m.records = append(m.records, *r) }

// ipsOf lists the addresses of a capture's IP packets.
func ipsOf(pkts []captured) []netip.Addr {
	seen := map[netip.Addr]bool{}
	var out []netip.Addr
	for _, c := range pkts {
		var p packet.Packet
		if p.Decode(c.frame) != reason.None || p.ARP {
			continue
		}
		for _, a := range []netip.Addr{p.Src, p.Dst} {
			if !seen[a] {
				seen[a] = true
				out = append(out, a)
			}
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Less(out[j]) })
	return out
}

// everyIPaPU makes each address a PU on its own node, all inside the
// target networks.
func everyIPaPU(ips []netip.Addr) *Topology {
	t := &Topology{}
	for i, a := range ips {
		name := fmt.Sprintf("pu%d", i)
		t.PUs = append(t.PUs, PUSpec{Name: name, Node: "node-" + name, IPs: []netip.Addr{a},
			Tags: identity.NewTags(map[string]string{"app": name})})
		t.TargetNetworks = append(t.TargetNetworks, netip.PrefixFrom(a, a.BitLen()))
	}
	return t
}

const allowAllPolicy = `
policies:
  - name: all
    selector: "*"
    ingress: [{name: any-in, action: allow}]
    egress: [{name: any-out, action: allow}]
`

func mustPolicy(t testing.TB, y string) *policy.Set {
	s, err := policy.Parse("test.yaml", []byte(y))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func run(t testing.TB, path string, topo *Topology, pol *policy.Set, mode dataplane.MidStream) (*memOut, Summary, []captured) {
	pkts := load(t, path)
	out := &memOut{}
	r, err := New(Options{Topology: topo, Policy: pol, Out: out, MidStream: mode})
	if err != nil {
		t.Fatal(err)
	}
	for i, c := range pkts {
		r.Packet(i, c.t, c.frame)
	}
	return out, r.Finish(), pkts
}

func topologyFor(pkts []captured) *Topology {
	ips := ipsOf(pkts)
	if len(ips) == 0 {
		ips = []netip.Addr{netip.MustParseAddr("10.9.9.9")}
	}
	return everyIPaPU(ips)
}

// expectation for a capture replayed with an allow-all policy, every
// address a PU on its own node, mid-stream rule drop. Derived from the
// README and the captures (see the comments).
type expectation struct {
	forwarded, consumed, injected int
	dropped                       map[string]int
	allowed, incomplete           int // TCP connections
}

var allowAllExpect = map[string]expectation{
	// ICMP echo request in 2 fragments (the later one passes because the
	// first was allowed) and the reply.
	"suricata-ipv4frags-icmp.pcap": {forwarded: 3},
	// conn 2's handshake ACK carries 98 bytes: a separate token-ACK is
	// injected before it; the server's early data (conn 1) passes. The
	// SYNs' data (65 and 70 bytes) is taken off before the token goes on
	// (the client's egress decides at the SYN-ACK). Conn 2 ends with two
	// RSTs after the FINs: the first (seq 98756183) is one byte behind
	// what the server acknowledged (the FIN): out of its window, dropped;
	// the second (98756184) is the exact one.
	"suricata-tfo-iana-syn-data.pcap": {forwarded: 19, injected: 1, dropped: map[string]int{"out-of-window": 1}, allowed: 2},
	// A UDP datagram between PUs: held while its flow's datagram
	// handshake runs (hello, reply, confirm injected), then delivered.
	"tcpdump-LINKTYPE_RAW_ipv4.pcap":      {forwarded: 1, injected: 3},
	"tcpdump-dns_tcp.pcap":                {forwarded: 11, allowed: 1},
	"tcpdump-ssh.pcap":                    {forwarded: 54, allowed: 1},
	"tcpdump-tcp-handshake-nano-sll.pcap": {forwarded: 3, allowed: 1},
	// wrong checksums are not the enforcer's business (and stay wrong).
	"zeek-chksums-localhost-bad-chksum.pcap": {forwarded: 10, allowed: 1},
	"zeek-http-curl_http_09-rst.pcap":        {forwarded: 8, allowed: 1},
	"zeek-http-get.pcap":                     {forwarded: 14, allowed: 1},
	"zeek-http-vlan-0.pcap":                  {forwarded: 14, allowed: 1},
	"zeek-icmp-destunreach-udp.pcap":         {forwarded: 1},
	"zeek-icmp-ping.pcap":                    {forwarded: 4},
	"zeek-icmp6-ping.pcap":                   {forwarded: 8},
	// 4+... ARP frames pass, the ICMP echoes in VLAN 123 are allowed.
	"zeek-icmp_dot1q.pcap": {forwarded: 15},
	// the lone trailing fragment (id 1) has no allowed first fragment.
	// Two DNS flows, each opened by a datagram handshake (3 messages).
	"zeek-ipv6-fragmented-dns.pcap": {forwarded: 7, injected: 6, dropped: map[string]int{"fragment": 1}},
	// 17 TCP connection attempts, all allowed by policy: 3 complete their
	// handshake (connect-then-abort); 14 never do (refused by the server's
	// kernel with a RST+ACK, or unanswered): incomplete.
	// One UDP flow among them: a datagram handshake (3 messages).
	"zeek-nmap-vsn-refused.pcap": {forwarded: 547, injected: 3, allowed: 3, incomplete: 14},
	"zeek-port4242-ipv6.pcap":    {forwarded: 8, allowed: 1},
	// conn 1's handshake ACK carries the HTTP request: one token-ACK. Its
	// SYN's Fast Open cookie request and conn 2's SYN data (86 bytes, with
	// the cookie) are taken off before the token goes on.
	"zeek-tcp-fast-open.pcap": {forwarded: 16, injected: 1, allowed: 2},
	// the SYN-ACK comes before the SYN: no state for it (unknown flow), the
	// SYN is accepted, then the client never saw a SYN-ACK: every later
	// packet is out of state on one side or the other.
	"zeek-tcp-handshake-reorder.pcap": {forwarded: 1, dropped: map[string]int{"unknown-flow": 1, "invalid-state": 12}, incomplete: 1},
	// no SYN at all: every packet is mid-stream (rule: drop).
	"zeek-tcp-http-missing-syn.pcapng": {dropped: map[string]int{"unknown-flow": 13}},
	// 5 frames shorter than their IP total length.
	"zeek-tcp-reassembly.pcap":  {forwarded: 112, dropped: map[string]int{"malformed-packet": 5}, allowed: 1},
	"zeek-tcp-syn-synack.pcap":  {forwarded: 2, incomplete: 1}, // no handshake ACK
	"zeek-tls1.2.pcap":          {forwarded: 22, allowed: 1},
	"zeek-trunc-ip4-trunc.pcap": {dropped: map[string]int{"malformed-packet": 1}},
	// the same handshake in 3 VLAN shapes (QinQ 10/20, VLAN 20, untagged):
	// 3 flows per side (VLAN is in the key), 3 connections of one 4-tuple.
	"zeek-vlan-pcp-dei.pcapng": {forwarded: 9, allowed: 3},
}

// asDelivered is a captured frame as an enforcer delivers it to a PU
// inside the target networks: a SYN without its data and Fast Open option
// (they wait for the client side's decision), anything else unchanged.
func asDelivered(f []byte) []byte {
	p, ok := isTCP(f)
	if !ok || p.Flags&(packet.SYN|packet.ACK) != packet.SYN {
		return f
	}
	p.Frame = bytes.Clone(f)
	g, _ := packet.StripSYNData(&p)
	return g
}

func isTCP(f []byte) (packet.Packet, bool) {
	var p packet.Packet
	ok := p.Decode(f) == reason.None && p.Proto == ipproto.TCP && p.Frag == packet.NotFragment
	return p, ok
}

// TestAllowAllEveryCapture replays every shared capture with an allow-all
// policy between enforced PUs: exact counts, and the core invariant: every
// frame delivered to a PU is byte-identical to the captured one (tokens
// only on the wire).
func TestAllowAllEveryCapture(t *testing.T) {
	files, err := fixtures.Captures()
	if err != nil {
		t.Fatal(err)
	}
	if len(files) != len(allowAllExpect) {
		t.Fatalf("%d captures, %d expectations", len(files), len(allowAllExpect))
	}
	for _, f := range files {
		name := filepath.Base(f)
		t.Run(name, func(t *testing.T) {
			want, ok := allowAllExpect[name]
			if !ok {
				t.Fatal("no expectation")
			}
			pkts := load(t, f)
			out, sum, _ := run(t, f, topologyFor(pkts), mustPolicy(t, allowAllPolicy), dataplane.MidStreamDrop)
			dropped := 0
			for _, n := range sum.Dropped {
				dropped += n
			}
			if want.dropped == nil {
				want.dropped = map[string]int{}
			}
			if sum.PacketsIn != len(pkts) || sum.Forwarded != want.forwarded || sum.Consumed != want.consumed ||
				sum.Injected != want.injected || fmt.Sprint(sum.Dropped) != fmt.Sprint(want.dropped) ||
				sum.ConnectionsAllowed != want.allowed || sum.ConnectionsDenied != 0 || sum.ConnectionsIncomplete != want.incomplete {
				t.Fatalf("summary %+v\nwant %+v", sum, want)
			}
			if sum.Forwarded+sum.Consumed+dropped != sum.PacketsIn {
				t.Fatalf("packets unaccounted for: %+v", sum)
			}
			// The invariant.
			delivered := 0
			for _, d := range out.delivered {
				if d.origin < 0 {
					continue
				}
				delivered++
				if !bytes.Equal(d.frame, asDelivered(pkts[d.origin].frame)) {
					t.Fatalf("packet %d delivered to %s differs from the capture\n got %x\nwant %x", d.origin+1, d.pu, d.frame, pkts[d.origin].frame)
				}
			}
			if delivered != want.forwarded {
				t.Fatalf("%d captured frames delivered, want %d", delivered, want.forwarded)
			}
			// Tokens appear on the wire: every SYN there is longer than the
			// captured SYNs (which had none) and carries the marker option.
			for _, w := range out.wire {
				p, ok := isTCP(w)
				if ok && p.Flags&packet.SYN != 0 {
					if _, has := packet.FindOption(&p, [4]byte{253, 4, 0x74, 0x72}); !has {
						t.Fatalf("SYN on the wire without token: %x", w)
					}
				}
			}
		})
	}
}

func TestMidStreamAllowACLPicksUp(t *testing.T) {
	dir, _ := fixtures.PcapDir()
	f := filepath.Join(dir, "zeek-tcp-http-missing-syn.pcapng")
	pkts := load(t, f)
	out, sum, _ := run(t, f, topologyFor(pkts), mustPolicy(t, allowAllPolicy), dataplane.MidStreamAllowACL)
	if sum.Forwarded != 13 || len(sum.Dropped) != 0 {
		t.Fatalf("allow-acl: %+v", sum)
	}
	for _, r := range out.records {
		if !r.MidStream || r.Action != "allow" {
			t.Fatalf("record: %+v", r)
		}
	}
	_, sum, _ = run(t, f, topologyFor(pkts), mustPolicy(t, allowAllPolicy), dataplane.MidStreamReset)
	// Each end resets: the SYN-ACK (app path of the server) gets a RST
	// toward the server PU; later packets likewise. Nothing passes.
	if sum.Forwarded != 0 || sum.Dropped["unknown-flow"] != 13 || sum.Injected != 13 {
		t.Fatalf("reset: %+v", sum)
	}
}

const denyAllPolicy = `
policies:
  - name: nothing
    selector: "*"
`

// TestDenyEveryTCPCapture: with a policy that allows nothing, no captured
// TCP frame reaches a PU; every client that sent a SYN gets a RST from the
// server's enforcer.
func TestDenyEveryTCPCapture(t *testing.T) {
	files, _ := fixtures.Captures()
	n := 0
	for _, f := range files {
		pkts := load(t, f)
		hasSYN := false
		for _, c := range pkts {
			if p, ok := isTCP(c.frame); ok && p.Flags == packet.SYN {
				hasSYN = true
			}
		}
		if !hasSYN {
			continue
		}
		n++
		t.Run(filepath.Base(f), func(t *testing.T) {
			topo := topologyFor(pkts)
			out, sum, _ := run(t, f, topo, mustPolicy(t, denyAllPolicy), dataplane.MidStreamDrop)
			for _, d := range out.delivered {
				p, ok := isTCP(d.frame)
				if !ok {
					continue
				}
				if d.origin >= 0 {
					t.Fatalf("captured TCP packet %d delivered to %s", d.origin+1, d.pu)
				}
				if p.Flags&packet.RST == 0 {
					t.Fatalf("injected non-RST delivered: %+v", p)
				}
			}
			// Every SYN's client got a RST for that connection.
			type conn struct{ c, s netip.AddrPort }
			rst := map[conn]bool{}
			for _, d := range out.delivered {
				if p, ok := isTCP(d.frame); ok && d.origin < 0 {
					rst[conn{netip.AddrPortFrom(p.Dst, p.DstPort), netip.AddrPortFrom(p.Src, p.SrcPort)}] = true
				}
			}
			for _, c := range pkts {
				if p, ok := isTCP(c.frame); ok && p.Flags == packet.SYN {
					if !rst[conn{netip.AddrPortFrom(p.Src, p.SrcPort), netip.AddrPortFrom(p.Dst, p.DstPort)}] {
						t.Fatalf("client %v:%d got no RST", p.Src, p.SrcPort)
					}
				}
			}
			if sum.ConnectionsAllowed != 0 || sum.ConnectionsDenied == 0 {
				t.Fatalf("connections: %+v", sum)
			}
			for _, r := range out.records {
				if r.Proto == ipproto.TCP && r.Direction == "ingress" && (r.Action != "deny" || r.Reason != "policy-denied") {
					t.Fatalf("server record: %+v", r)
				}
			}
		})
	}
	if n < 15 {
		t.Fatalf("only %d captures with SYNs", n)
	}
}

func TestPKI(t *testing.T) {
	dir, _ := fixtures.PcapDir()
	f := filepath.Join(dir, "zeek-http-get.pcap")
	pkts := load(t, f)
	out := &memOut{}
	r, err := New(Options{Topology: topologyFor(pkts), Policy: mustPolicy(t, allowAllPolicy), Out: out, PKI: true})
	if err != nil {
		t.Fatal(err)
	}
	for i, c := range pkts {
		r.Packet(i, c.t, c.frame)
	}
	sum := r.Finish()
	if sum.Forwarded != 14 || sum.ConnectionsAllowed != 1 {
		t.Fatalf("pki: %+v", sum)
	}
	for _, rec := range out.records {
		if rec.Remote.Node == "" {
			t.Fatalf("record without peer node: %+v", rec)
		}
	}
}

func TestTopologyErrors(t *testing.T) {
	cases := []struct{ yaml, want string }{
		{"pus:\n  - name: a\n    ip: 10.0.0.1\n  - name: a\n    ip: 10.0.0.2\n", "t.yaml:4:5: pus[1]: name: a given twice"},
		{"pus:\n  - name: a\n    ip: nope\n", "t.yaml:2:5: pus[0]: ip: "},
		{"pus:\n  - name: a\n    ip: 10.0.0.1\n  - name: b\n    ip: 10.0.0.1\n", "already belongs to a"},
		{"pus:\n  - name: a\n    address: 10.0.0.1\n", "field address not found"},
		{"targetNetworks: [10.0.0.0/33]\n", "targetNetworks"},
	}
	for _, c := range cases {
		_, err := ParseTopology("t.yaml", []byte(c.yaml))
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Fatalf("%q: got %v, want %q", c.yaml, err, c.want)
		}
	}
	topo, err := ParseTopology("t.yaml", []byte("targetNetworks: [10.0.0.0/8]\npus:\n  - {name: web, ip: 10.0.0.1, node: n1, tags: {app: web}}\n  - {name: db, ips: [10.0.0.2, \"fd00::2\"], tags: {app: db}}\n"))
	if err != nil {
		t.Fatal(err)
	}
	if len(topo.PUs) != 2 || topo.PUs[1].Node != "node-db" || len(topo.PUs[1].IPs) != 2 || topo.PUs[0].Tags.Get("app") != "web" {
		t.Fatalf("%+v", topo)
	}
}

func BenchmarkReplayThroughput(b *testing.B) {
	dir, _ := fixtures.PcapDir()
	f := filepath.Join(dir, "tcpdump-ssh.pcap")
	pkts := load(b, f)
	topo := topologyFor(pkts)
	pol := mustPolicy(b, allowAllPolicy)
	b.ReportAllocs()
	n := 0
	for b.Loop() {
		b.StopTimer() // node setup (policy compile, keys) is not per packet
		r, err := New(Options{Topology: topo, Policy: pol})
		if err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		for i, c := range pkts {
			r.Packet(i, c.t, c.frame)
		}
		r.Finish()
		n += len(pkts)
	}
	b.ReportMetric(float64(n)/b.Elapsed().Seconds(), "packets/s")
}
