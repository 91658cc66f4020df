package k8s

import (
	"fmt"
	"io"
	"slices"
	"strings"

	"github.com/trireme-go/trireme/ipproto"
	"github.com/trireme-go/trireme/policy"
)

// Cell is the decision for one (client, server) pair: the server's ingress
// and the client's egress.
type Cell struct {
	Ingress, Egress policy.Decision
	// NotServed: the probe names a port the server does not declare (no
	// decision was made).
	NotServed bool
}

// Allowed reports whether the connection is allowed: both halves allow it.
func (c *Cell) Allowed() bool {
	return !c.NotServed && c.Ingress.Action == policy.Allow && c.Egress.Action == policy.Allow
}

// Matrix is the reachability of every pod from every pod on one port.
type Matrix struct {
	Proto    ipproto.Proto
	Port     uint16 // 0 when PortName is set
	PortName string // a named port, resolved on each server
	PUs      []PU
	Cells    [][]Cell // [from][to]
}

// Label is the probed port as "tcp/80" or "tcp/http".
func (m *Matrix) Label() string {
	if m.PortName != "" {
		return strings.ToLower(ProtocolName(m.Proto)) + "/" + m.PortName
	}
	return fmt.Sprintf("%s/%d", strings.ToLower(ProtocolName(m.Proto)), m.Port)
}

// Reach decides every ordered pair of PUs (the diagonal included: a pod's
// traffic to itself follows its policies) on proto/port with the engine's
// Decide, as the enforcers do: the client's egress against the server's
// identity and address, the server's ingress against the client's, the
// target and excluded networks applied. Every protocol is decided with the
// peer's identity, as NetworkPolicy means it: live, only TCP carries
// identity today (docs/kubernetes.md).
func Reach(e *policy.Engine, pus []PU, proto ipproto.Proto, port uint16) *Matrix {
	m := newMatrix(pus, proto)
	m.Port = port
	r := newReacher(e, pus)
	for to := range pus {
		r.column(m, to, port)
	}
	return m
}

// ReachNamed is Reach on a named port: each server's container port of that
// name and protocol (as cyclonus probes "serve-80-tcp"). Servers without one
// are NotServed.
func ReachNamed(e *policy.Engine, pus []PU, proto ipproto.Proto, name string) *Matrix {
	m := newMatrix(pus, proto)
	m.PortName = name
	r := newReacher(e, pus)
	for to := range pus {
		i := slices.IndexFunc(pus[to].Ports, func(p Port) bool { return p.Name == name && p.Protocol == proto })
		if i < 0 {
			for from := range pus {
				m.Cells[from][to].NotServed = true
			}
			continue
		}
		r.column(m, to, pus[to].Ports[i].Port)
	}
	return m
}

func newMatrix(pus []PU, proto ipproto.Proto) *Matrix {
	m := &Matrix{Proto: proto, PUs: pus, Cells: make([][]Cell, len(pus))}
	for i := range m.Cells {
		m.Cells[i] = make([]Cell, len(pus))
	}
	return m
}

// reacher holds each PU as an endpoint of the engine, prepared once.
type reacher struct {
	e   *policy.Engine
	eps []policy.Endpoint
}

func newReacher(e *policy.Engine, pus []PU) *reacher {
	r := &reacher{e: e, eps: make([]policy.Endpoint, len(pus))}
	for i := range pus {
		r.eps[i] = e.PU(pus[i].Tags, pus[i].IP())
	}
	return r
}

// column decides every client toward server "to" on port.
func (r *reacher) column(m *Matrix, to int, port uint16) {
	for from := range r.eps {
		d := r.e.Decide(policy.Conn{Client: r.eps[from], Server: r.eps[to], Proto: m.Proto, Port: port, AllProtocolsCarryIdentity: true})
		c := &m.Cells[from][to]
		c.Ingress, c.Egress = d.Ingress.Decision, d.Egress.Decision
	}
}

// Format prints the matrix as a table: one row per client, numbered; one
// column per server, by number. "." allowed, "I" denied by the server's
// ingress only, "E" by the client's egress only, "X" by both, "-" a named
// port the server does not declare.
func (m *Matrix) Format(w io.Writer) error {
	width := 0
	for i := range m.PUs {
		width = max(width, len(m.PUs[i].ID()))
	}
	num := len(fmt.Sprint(len(m.PUs)))
	var b strings.Builder
	fmt.Fprintf(&b, "%s: rows from, columns to; . allowed, I denied by ingress, E denied by egress, X both, - port not served\n",
		m.Label())
	fmt.Fprintf(&b, "%*s", num+1+width, "")
	for i := range m.PUs {
		fmt.Fprintf(&b, " %*d", num, i+1)
	}
	b.WriteByte('\n')
	for from := range m.PUs {
		fmt.Fprintf(&b, "%*d %-*s", num, from+1, width, m.PUs[from].ID())
		for to := range m.PUs {
			fmt.Fprintf(&b, " %*s", num, m.Cells[from][to].symbol())
		}
		b.WriteByte('\n')
	}
	_, err := io.WriteString(w, b.String())
	return err
}

func (c *Cell) symbol() string {
	if c.NotServed {
		return "-"
	}
	in, eg := c.Ingress.Action == policy.Allow, c.Egress.Action == policy.Allow
	switch {
	case in && eg:
		return "."
	case eg:
		return "I"
	case in:
		return "E"
	}
	return "X"
}
