package k8s

import (
	"fmt"
	"io"
	"strings"

	"github.com/trireme-go/trireme/policy"
)

// Cell is the decision for one (client, server) pair: the server's ingress
// and the client's egress.
type Cell struct {
	Ingress, Egress policy.Decision
}

// Allowed reports whether the connection is allowed: both halves allow it.
func (c *Cell) Allowed() bool {
	return c.Ingress.Action == policy.Allow && c.Egress.Action == policy.Allow
}

// Matrix is the reachability of every pod from every pod on one port.
type Matrix struct {
	Proto policy.Protocol
	Port  uint16
	PUs   []PU
	Cells [][]Cell // [from][to]
}

// Reach decides every ordered pair of PUs (the diagonal included: a pod's
// traffic to itself follows its policies) on proto/port with the engine, as
// the enforcers do: the client's egress against the server's identity and
// address, the server's ingress against the client's.
func Reach(e *policy.Engine, pus []PU, proto policy.Protocol, port uint16) *Matrix {
	m := &Matrix{Proto: proto, Port: port, PUs: pus, Cells: make([][]Cell, len(pus))}
	pols := make([]*policy.PUPolicy, len(pus))
	ids := make([]*policy.Identity, len(pus))
	for i := range pus {
		pols[i] = e.ForPU(pus[i].Tags)
		ids[i] = policy.NewIdentity(pus[i].Tags)
	}
	for from := range pus {
		m.Cells[from] = make([]Cell, len(pus))
		for to := range pus {
			c := &m.Cells[from][to]
			c.Egress = pols[from].Egress(ids[to], pus[to].IP(), proto, port)
			c.Ingress = pols[to].Ingress(ids[from], pus[from].IP(), proto, port)
		}
	}
	return m
}

// Format prints the matrix as a table: one row per client, numbered; one
// column per server, by number. "." allowed, "I" denied by the server's
// ingress only, "E" by the client's egress only, "X" by both.
func (m *Matrix) Format(w io.Writer) error {
	width := 0
	for i := range m.PUs {
		width = max(width, len(m.PUs[i].ID()))
	}
	num := len(fmt.Sprint(len(m.PUs)))
	var b strings.Builder
	fmt.Fprintf(&b, "%s/%d: rows from, columns to; . allowed, I denied by ingress, E denied by egress, X both\n",
		strings.ToLower(ProtocolName(m.Proto)), m.Port)
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
