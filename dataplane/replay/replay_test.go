package replay

import (
	"bytes"
	"fmt"
	"io"
	"net/netip"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/trireme-go/trireme/dataplane"
	"github.com/trireme-go/trireme/dataplane/internal/fixtures"
	"github.com/trireme-go/trireme/dataplane/packet"
	"github.com/trireme-go/trireme/dataplane/pcapio"
	"github.com/trireme-go/trireme/policy"
	"github.com/trireme-go/trireme/reason"
)

type captured struct {
	t     time.Time
	frame []byte
}

func load(t testing.TB, path string) []captured {
	t.Helper()
	r, c, err := pcapio.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var out []captured
	for {
		p, err := r.Next()
		if err == io.EOF {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, captured{p.Time, p.Frame})
	}
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
	ps := packet.NewParser()
	seen := map[netip.Addr]bool{}
	var out []netip.Addr
	for _, c := range pkts {
		var p packet.Packet
		if ps.Parse(c.frame, &p) != reason.None || p.ARP {
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
			Tags: policy.NewTags(map[string]string{"app": name})})
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

func TestExplore(t *testing.T) {
	files, _ := fixtures.Captures()
	for _, f := range files {
		pkts := load(t, f)
		ips := ipsOf(pkts)
		if len(ips) == 0 {
			ips = []netip.Addr{netip.MustParseAddr("10.9.9.9")}
		}
		out, sum, _ := run(t, f, everyIPaPU(ips), mustPolicy(t, allowAllPolicy), dataplane.MidStreamDrop)
		fmt.Printf("%-42s in=%d fwd=%d cons=%d inj=%d drop=%v conns=%d/%d/%d flows=%d deliv=%d\n", filepath.Base(f), sum.PacketsIn, sum.Forwarded, sum.Consumed, sum.Injected,
			strings.Join(strings.Fields(sum.DroppedString()), " "), sum.ConnectionsAllowed, sum.ConnectionsDenied, sum.ConnectionsIncomplete, sum.Flows, len(out.delivered))
	}
}
