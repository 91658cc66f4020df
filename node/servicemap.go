package node

import (
	"net/netip"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/trireme-go/trireme/ipproto"
)

// ServiceMap is the web page's picture of the node's flows over a time
// window: the endpoints as nodes (this node's PUs, peers with a verified
// identity, external addresses) and, between a client and a server, one
// edge counting their connections by verdict.
type ServiceMap struct {
	Generated time.Time `json:"generated"`
	Window    string    `json:"window"`
	Group     string    `json:"group,omitempty"`
	Nodes     []MapNode `json:"nodes"`
	Edges     []MapEdge `json:"edges"`
}

// MapNode is one endpoint.
type MapNode struct {
	ID    string `json:"id"`
	Label string `json:"label"`
	// Kind: pu (a PU of this node), peer (an endpoint that presented an
	// identity: a PU of another node), external (an address without one).
	Kind string `json:"kind"`
	// Group is the value of the map's group tag (empty: none).
	Group string   `json:"group,omitempty"`
	PU    string   `json:"pu,omitempty"` // the PU's ID (kind pu)
	IPs   []string `json:"ips,omitempty"`
	Tags  []string `json:"tags,omitempty"`
}

// MapEdge is the connections from Source (the clients) to Target (the
// servers) in the window, by verdict, each connection counted once however
// many records its two enforcers wrote.
type MapEdge struct {
	ID       string    `json:"id"`
	Source   string    `json:"source"`
	Target   string    `json:"target"`
	Allowed  int       `json:"allowed"`
	Denied   int       `json:"denied"`
	Rejected int       `json:"rejected"`
	None     int       `json:"none"`
	Services []string  `json:"services"` // proto/port, sorted
	Last     time.Time `json:"last"`
}

// maxMapNodes bounds the map (a scan of many addresses would otherwise
// make a node each): the externals beyond it are folded into one node.
const maxMapNodes = 500

// mapper names the endpoints of flows as map nodes.
type mapper struct {
	group  string
	byID   map[string]PUInfo
	byAddr map[netip.Addr]PUInfo
	nodes  map[string]*MapNode
}

func newMapper(pus []PUInfo, group string) *mapper {
	m := &mapper{group: group, byID: map[string]PUInfo{}, byAddr: map[netip.Addr]PUInfo{}, nodes: map[string]*MapNode{}}
	for _, p := range pus {
		m.byID[p.ID] = p
		for _, a := range p.IPs {
			m.byAddr[a.Unmap()] = p
		}
	}
	return m
}

func tagValue(kvs []string, key string) string {
	for _, kv := range kvs {
		if k, v, ok := strings.Cut(kv, "="); ok && k == key {
			return v
		}
	}
	return ""
}

func (m *mapper) puNode(p PUInfo) string {
	id := "pu:" + p.ID
	if _, ok := m.nodes[id]; !ok {
		n := &MapNode{ID: id, Label: p.Name, Kind: "pu", PU: p.ID, Tags: tagStrings(p.Tags), Group: p.Tags[m.group]}
		for _, a := range p.IPs {
			n.IPs = append(n.IPs, a.String())
		}
		m.nodes[id] = n
	}
	return id
}

func tagStrings(m map[string]string) []string {
	out := make([]string, 0, len(m))
	for k, v := range m {
		out = append(out, k+"="+v)
	}
	sort.Strings(out)
	return out
}

// local is the node of a flow's local PU.
func (m *mapper) local(f *Flow) string {
	if p, ok := m.byID[f.Local.ID]; ok {
		return m.puNode(p)
	}
	// A PU gone since: named by its ID and the tags of the record.
	id := "pu:" + f.Local.ID
	if _, ok := m.nodes[id]; !ok {
		m.nodes[id] = &MapNode{ID: id, Label: f.Local.ID, Kind: "pu", PU: f.Local.ID, Tags: f.Local.Tags, Group: tagValue(f.Local.Tags, m.group)}
	}
	return id
}

// remote is the node of a flow's peer.
func (m *mapper) remote(f *Flow) string {
	ip := f.Remote.IP.Unmap()
	if p, ok := m.byAddr[ip]; ok {
		return m.puNode(p)
	}
	kind, id := "external", "ext:"+ip.String()
	if len(f.Remote.Tags) > 0 {
		kind, id = "peer", "peer:"+ip.String()
	}
	if _, ok := m.nodes[id]; !ok {
		if len(m.nodes) >= maxMapNodes {
			id = "ext:other"
			if _, ok := m.nodes[id]; !ok {
				m.nodes[id] = &MapNode{ID: id, Label: "other addresses", Kind: "external"}
			}
			return id
		}
		label := ip.String()
		if name := tagValue(f.Remote.Tags, "@sys:name"); name != "" {
			label = name + " (" + f.Remote.Node + ")"
		}
		m.nodes[id] = &MapNode{ID: id, Label: label, Kind: kind, IPs: []string{ip.String()}, Tags: f.Remote.Tags, Group: tagValue(f.Remote.Tags, m.group)}
	}
	return id
}

// ends returns the client's and the server's nodes of a flow.
func (m *mapper) ends(f *Flow) (client, server string) {
	l, r := m.local(f), m.remote(f)
	if f.Direction == "ingress" {
		return r, l
	}
	return l, r
}

// connKey identifies a connection across its records (both enforcers',
// the interim and the final one).
type connKey struct {
	proto          ipproto.Proto
	client, server netip.AddrPort
}

// verdictRank orders a connection's verdicts: a refusal by either side
// is what happened to it.
func verdictRank(v string) int {
	switch v {
	case VerdictDenied, VerdictRejected:
		return 3
	case VerdictAllowed:
		return 2
	}
	return 1
}

// buildServiceMap makes the map of flows (oldest first) decided at or
// after since.
func buildServiceMap(flows []Flow, pus []PUInfo, group string, since time.Time) ServiceMap {
	m := newMapper(pus, group)
	// Every PU is on the map, with or without flows.
	for _, p := range pus {
		m.puNode(p)
	}
	type conn struct {
		src, dst string
		verdict  string
		service  string
		last     time.Time
	}
	conns := map[connKey]*conn{}
	for i := range flows {
		f := &flows[i]
		if f.Time.Before(since) {
			continue
		}
		k := connKey{f.Proto, f.Client, f.Server}
		if f.Count > 0 { // an aggregate of refusals (not in the ring today): one each
			k.client = netip.AddrPortFrom(f.Client.Addr(), uint16(f.Seq))
		}
		c := conns[k]
		if c == nil {
			src, dst := m.ends(f)
			svc := f.Proto.String()
			if f.Proto.HasPorts() {
				svc += "/" + strconv.Itoa(int(f.Server.Port()))
			}
			c = &conn{src: src, dst: dst, verdict: f.Verdict, service: svc}
			conns[k] = c
		}
		if verdictRank(f.Verdict) > verdictRank(c.verdict) {
			c.verdict = f.Verdict
		}
		if f.EndTime.After(c.last) {
			c.last = f.EndTime
		}
	}
	edges := map[string]*MapEdge{}
	for _, c := range conns {
		id := c.src + ">" + c.dst
		e := edges[id]
		if e == nil {
			e = &MapEdge{ID: id, Source: c.src, Target: c.dst}
			edges[id] = e
		}
		switch c.verdict {
		case VerdictAllowed:
			e.Allowed++
		case VerdictDenied:
			e.Denied++
		case VerdictRejected:
			e.Rejected++
		default:
			e.None++
		}
		if !slices.Contains(e.Services, c.service) {
			e.Services = append(e.Services, c.service)
		}
		if c.last.After(e.Last) {
			e.Last = c.last
		}
	}
	out := ServiceMap{Nodes: []MapNode{}, Edges: []MapEdge{}, Group: group}
	for _, n := range m.nodes {
		out.Nodes = append(out.Nodes, *n)
	}
	sort.Slice(out.Nodes, func(i, j int) bool { return out.Nodes[i].ID < out.Nodes[j].ID })
	for _, e := range edges {
		sort.Strings(e.Services)
		out.Edges = append(out.Edges, *e)
	}
	sort.Slice(out.Edges, func(i, j int) bool { return out.Edges[i].ID < out.Edges[j].ID })
	return out
}

// flowTouches reports whether a flow has the map node id as an end (or, for
// an edge "a>b", goes from a to b).
func (m *mapper) flowTouches(f *Flow, id string) bool {
	c, s := m.ends(f)
	if a, b, ok := strings.Cut(id, ">"); ok {
		return c == a && s == b
	}
	return c == id || s == id
}
