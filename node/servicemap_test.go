package node

import (
	"net/netip"
	"testing"
	"time"

	"github.com/trireme-go/trireme/dataplane"
	"github.com/trireme-go/trireme/ipproto"
)

// TestServiceMap: a connection counts once on its edge however many records
// its enforcers wrote (client and server, interim and final), a refusal by
// either side is the connection's verdict, externals and peers of other
// nodes are nodes of their own, and records before the window are left out.
func TestServiceMap(t *testing.T) {
	pus := []PUInfo{
		{ID: "a", Name: "front", IPs: []netip.Addr{netip.MustParseAddr("10.0.0.2")}, Tags: map[string]string{"app": "frontend"}},
		{ID: "b", Name: "web", IPs: []netip.Addr{netip.MustParseAddr("10.0.0.3")}, Tags: map[string]string{"app": "web"}},
	}
	now := time.Unix(10000, 0)
	rec := func(local, dir, verdict string, client, server string, remoteTags ...string) Flow {
		c, s := netip.MustParseAddrPort(client), netip.MustParseAddrPort(server)
		remote := s.Addr()
		if dir == "ingress" {
			remote = c.Addr()
		}
		return Flow{Verdict: verdict, Record: dataplane.Record{Time: now, EndTime: now, Proto: ipproto.TCP, Client: c, Server: s, Direction: dir,
			Local: dataplane.PUInfo{ID: local}, Remote: dataplane.PeerInfo{IP: remote, External: len(remoteTags) == 0 && remote.String() == "8.8.8.8", Tags: remoteTags, Node: "n2"}}}
	}
	flows := []Flow{
		// One allowed connection a -> b: four records.
		rec("a", "egress", VerdictAllowed, "10.0.0.2:1000", "10.0.0.3:80"),
		rec("b", "ingress", VerdictAllowed, "10.0.0.2:1000", "10.0.0.3:80"),
		rec("a", "egress", VerdictAllowed, "10.0.0.2:1000", "10.0.0.3:80"),
		rec("b", "ingress", VerdictAllowed, "10.0.0.2:1000", "10.0.0.3:80"),
		// One a -> b the server denied (the client saw no answer).
		rec("a", "egress", VerdictNone, "10.0.0.2:1001", "10.0.0.3:80"),
		rec("b", "ingress", VerdictDenied, "10.0.0.2:1001", "10.0.0.3:80"),
		// a -> an external address, denied; a -> a PU of another node.
		rec("a", "egress", VerdictDenied, "10.0.0.2:1002", "8.8.8.8:53"),
		rec("a", "egress", VerdictAllowed, "10.0.0.2:1003", "10.1.0.9:443", "@sys:name=db", "app=db"),
	}
	old := rec("b", "egress", VerdictAllowed, "10.0.0.3:999", "10.0.0.2:22")
	old.Time = now.Add(-time.Hour)
	flows = append(flows, old)

	m := buildServiceMap(flows, pus, "app", now.Add(-5*time.Minute))
	nodes := map[string]MapNode{}
	for _, n := range m.Nodes {
		nodes[n.ID] = n
	}
	for id, want := range map[string]struct{ kind, group, label string }{
		"pu:a": {"pu", "frontend", "front"}, "pu:b": {"pu", "web", "web"},
		"ext:8.8.8.8": {"external", "", "8.8.8.8"}, "peer:10.1.0.9": {"peer", "db", "db (n2)"},
	} {
		n, ok := nodes[id]
		if !ok || n.Kind != want.kind || n.Group != want.group || n.Label != want.label {
			t.Errorf("node %s = %+v, want %+v", id, n, want)
		}
	}
	if len(m.Nodes) != 4 {
		t.Errorf("%d nodes: %+v", len(m.Nodes), m.Nodes)
	}
	edges := map[string]MapEdge{}
	for _, e := range m.Edges {
		edges[e.ID] = e
	}
	if e := edges["pu:a>pu:b"]; e.Allowed != 1 || e.Denied != 1 || e.None != 0 || len(e.Services) != 1 || e.Services[0] != "tcp/80" {
		t.Errorf("a -> b: %+v", e)
	}
	if e := edges["pu:a>ext:8.8.8.8"]; e.Denied != 1 {
		t.Errorf("a -> 8.8.8.8: %+v", e)
	}
	if e := edges["pu:a>peer:10.1.0.9"]; e.Allowed != 1 {
		t.Errorf("a -> db: %+v", e)
	}
	if _, ok := edges["pu:b>pu:a"]; ok || len(m.Edges) != 3 {
		t.Errorf("edges: %+v (the record before the window must be left out)", m.Edges)
	}
}
