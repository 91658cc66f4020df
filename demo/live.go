package demo

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/trireme-go/trireme/dataplane"
	"github.com/trireme-go/trireme/monitor/process"
)

// Conn is a connection the demo makes: Client connects to Server on Proto
// ("tcp" or "udp") and Port.
type Conn struct {
	Client, Server string
	Proto          string
	Port           int
}

func (c Conn) String() string {
	return fmt.Sprintf("%s -> %s:%s/%d", c.Client, c.Server, c.Proto, c.Port)
}

// Observed outcomes of a connection, as `trireme probe connect` reports them.
const (
	Connected = "connected"
	Refused   = "refused"   // a RST answered the SYN (UDP: port unreachable)
	Reset     = "reset"     // a RST after the connection was established
	TimedOut  = "timed out" // no answer
	Failed    = "error"
)

var outcomes = [...]string{Connected, Refused, Reset, TimedOut, Failed}

// Row is one connection's result: what the client saw, and what the
// enforcers decided according to the flow log.
type Row struct {
	Conn     Conn   `json:"conn"`
	Observed string `json:"observed"`
	Answer   string `json:"answer,omitempty"` // the server's name when connected
	// Decision is allow, deny or reject from the flow log; "" when no
	// enforcer wrote a record (excluded networks bypass trireme).
	Decision string `json:"decision"`
	Reason   string `json:"reason"`
	// Side is the enforcer that decided a denial: "server" (ingress) or
	// "client" (egress).
	Side string `json:"side,omitempty"`
	// Rules are the deciding rules ("policy/rule"), ingress then egress.
	Rules []string `json:"rules,omitempty"`
	// ObservedRules are observe-mode rules that matched.
	ObservedRules []string `json:"observedRules,omitempty"`
	Records       int      `json:"records"`
	clientAddr    netip.Addr
	server        netip.AddrPort
	since         time.Time // with no clientAddr: records since then
}

// NewRunRow makes a row for a connection from a PU whose address the demo
// does not know (one `trireme run` made): the server's records of
// connections from any other address since `since` are its.
func (e *Env) NewRunRow(c Conn, observed, answer string, since time.Time) Row {
	sv := e.hosts[c.Server]
	return Row{Conn: c, Observed: observed, Answer: answer, since: since, server: netip.AddrPortFrom(sv.Addr, uint16(c.Port))}
}

func (e *Env) isPU(name string) bool {
	if h := e.hosts[name]; h != nil {
		return h.PU
	}
	return true // a PU trireme run made
}

func (e *Env) known(a netip.Addr) bool {
	for _, h := range e.hosts {
		if h.Addr == a {
			return true
		}
	}
	return false
}

// ProbeTimeout bounds each connection attempt.
const ProbeTimeout = 2 * time.Second

// Connect makes the connections, at most parallel at a time, each with
// `trireme probe connect` run in the client's namespace.
func (e *Env) Connect(ctx context.Context, conns []Conn, parallel int) ([]Row, error) {
	rows := make([]Row, len(conns))
	for i, c := range conns {
		cl, sv := e.hosts[c.Client], e.hosts[c.Server]
		if cl == nil || sv == nil {
			return nil, fmt.Errorf("connection %s: unknown host", c)
		}
		rows[i] = Row{Conn: c, clientAddr: cl.Addr, server: netip.AddrPortFrom(sv.Addr, uint16(c.Port))}
	}
	sem := make(chan struct{}, parallel)
	var wg sync.WaitGroup
	errs := make([]error, len(conns))
	for i := range rows {
		wg.Add(1)
		go func() {
			defer wg.Done()
			select {
			case sem <- struct{}{}:
			case <-ctx.Done():
				errs[i] = ctx.Err()
				return
			}
			defer func() { <-sem }()
			r := &rows[i]
			r.Observed, r.Answer, errs[i] = e.probe(ctx, e.hostNS[r.Conn.Client], r.Conn.Proto, r.server)
		}()
	}
	wg.Wait()
	return rows, errors.Join(errs...)
}

// probe runs `trireme probe connect` in ns and classifies its exit code.
func (e *Env) probe(ctx context.Context, ns, proto string, server netip.AddrPort) (outcome, answer string, err error) {
	var out bytes.Buffer
	cmd := exec.CommandContext(ctx, e.Binary, "probe", "connect", "--"+proto, server.String(), "--timeout", ProbeTimeout.String())
	cmd.Stdout, cmd.Stderr = &out, &out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := process.Start(nsPath(ns), cmd); err != nil {
		return "", "", err
	}
	werr := cmd.Wait()
	if ctx.Err() != nil {
		return "", "", ctx.Err()
	}
	code := cmd.ProcessState.ExitCode()
	if code < 0 || code >= len(outcomes) {
		return "", "", fmt.Errorf("probe connect %v: %v: %s", server, werr, out.String())
	}
	if code == 0 {
		answer = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(out.String()), "ok"))
	}
	return outcomes[code], answer, nil
}

// ReadRecords reads the flow log (none yet: no records).
func ReadRecords(path string) ([]dataplane.Record, error) {
	f, err := os.Open(path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, nil
		}
		return nil, err
	}
	defer f.Close()
	return dataplane.ReadRecords(f)
}

// Explain fills each row's decision from the flow log. Records are written
// asynchronously, so it waits (up to wait) until each row has what it
// needs: a denial record for a connection that failed, and a record from
// each enforced end for one that connected.
func (e *Env) Explain(rows []Row, wait time.Duration) error {
	deadline := time.Now().Add(wait)
	for {
		recs, err := ReadRecords(e.FlowLog())
		if err != nil {
			return err
		}
		complete := true
		for i := range rows {
			if !e.explain(&rows[i], recs) {
				complete = false
			}
		}
		if complete || time.Now().After(deadline) {
			return nil
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// explain fills one row and reports whether the records are complete.
func (e *Env) explain(r *Row, recs []dataplane.Record) bool {
	var mine []dataplane.Record
	for _, rec := range recs {
		if rec.Server != r.server || !strings.EqualFold(rec.Proto.String(), r.Conn.Proto) {
			continue
		}
		if rec.Client.Addr() == r.clientAddr || (!r.clientAddr.IsValid() && !rec.Time.Before(r.since) && !e.known(rec.Client.Addr())) {
			mine = append(mine, rec)
		}
	}
	sort.SliceStable(mine, func(i, j int) bool { return mine[i].Time.Before(mine[j].Time) })
	r.Records = len(mine)
	r.Decision, r.Reason, r.Side, r.Rules, r.ObservedRules = "", "", "", nil, nil
	// The deciding record of a denied connection is the one its decision
	// wrote (end "denied"); the other end's record (action "none": it
	// never decided) only tells that it saw the connection refused.
	for i := range mine {
		rec := &mine[i]
		if rec.End == dataplane.EndDenied && r.Decision == "" {
			r.Decision, r.Reason = rec.Action, rec.Reason
			r.Side = "server"
			if rec.Direction == "egress" {
				r.Side = "client"
			}
			if rec.Rule != nil {
				r.Rules = []string{ruleName(rec.Rule)}
			}
		}
	}
	var in, out *dataplane.Record
	for i := range mine {
		rec := &mine[i]
		if rec.Observed != nil {
			name := ruleName(rec.Observed)
			if !contains(r.ObservedRules, name) {
				r.ObservedRules = append(r.ObservedRules, name)
			}
		}
		if rec.Action == "allow" {
			if rec.Direction == "ingress" && in == nil {
				in = rec
			} else if rec.Direction == "egress" && out == nil {
				out = rec
			}
		}
	}
	if r.Decision != "" {
		return true
	}
	if in == nil && out == nil {
		// Nothing yet: complete only when no enforcer is involved
		// (excluded networks), which a connection that went through shows.
		return r.Observed == Connected && !e.enforcedEnds(r)
	}
	r.Decision = "allow"
	for _, rec := range []*dataplane.Record{in, out} {
		if rec == nil {
			continue
		}
		if r.Reason == "" && rec.Reason != "none" {
			r.Reason = rec.Reason
		}
		if rec.Rule != nil {
			r.Rules = append(r.Rules, ruleName(rec.Rule))
		}
	}
	return (!e.isPU(r.Conn.Client) || out != nil) && (!e.isPU(r.Conn.Server) || in != nil)
}

// enforcedEnds reports whether an enforcer should have recorded the
// connection: a PU is one of its ends and neither end is excluded.
func (e *Env) enforcedEnds(r *Row) bool {
	for _, p := range e.Excluded {
		if (r.clientAddr.IsValid() && p.Contains(r.clientAddr)) || p.Contains(r.server.Addr()) {
			return false
		}
	}
	return e.isPU(r.Conn.Client) || e.isPU(r.Conn.Server)
}

func ruleName(ri *dataplane.RuleInfo) string {
	name := ri.Name
	if name == "" {
		name = fmt.Sprintf("%s[%d]", ri.Direction, ri.Index)
	}
	return ri.Policy + "/" + name
}

func contains(xs []string, s string) bool {
	for _, x := range xs {
		if x == s {
			return true
		}
	}
	return false
}
