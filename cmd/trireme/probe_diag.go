package main

// `trireme probe FROM TO:PORT`: a diagnostic connection from a PU's
// namespace, explained by the flow records the daemon wrote about it: the
// verdict, which side decided, by which rule, the peer's identity as the
// enforcers verified it, and what the handshake's enforcement added.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	"github.com/trireme-go/trireme/netsetup"
	"github.com/trireme-go/trireme/node"
)

// probeReport is what `trireme probe FROM TO:PORT` found.
type probeReport struct {
	From    string         `json:"from"`
	To      netip.AddrPort `json:"to"`
	ToName  string         `json:"toName,omitempty"`
	Local   netip.AddrPort `json:"local"`
	Outcome string         `json:"outcome"` // ok, refused, reset, timeout, error
	Error   string         `json:"error,omitempty"`
	// Verdict is the flow's: allowed, denied, rejected, or none (no
	// decision was recorded: nothing answered).
	Verdict string `json:"verdict"`
	// DecidedBy is the side whose enforcer refused the connection
	// (client or server), or "both" when both allowed it.
	DecidedBy string `json:"decidedBy,omitempty"`
	// Client and Server are the records of each side's enforcer on this
	// node (a side on another node has none here).
	Client *node.Flow `json:"client,omitempty"`
	Server *node.Flow `json:"server,omitempty"`
	// Handshake is the connect time through the enforcers; RTT the
	// kernel's round-trip estimate of the established connection (its
	// packets stay in the kernel); Added their difference: what the
	// enforcement of the handshake cost.
	Handshake time.Duration `json:"handshakeNs"`
	RTT       time.Duration `json:"rttNs,omitempty"`
	Added     time.Duration `json:"addedNs,omitempty"`
}

func probeDiagRun(cmd *cobra.Command, args []string, socket string, timeout time.Duration, asJSON bool) error {
	if len(args) != 2 {
		return &exitError{code: 2, err: errors.New("usage: trireme probe FROM TO:PORT (or probe serve|connect)")}
	}
	c := node.NewClient(socket)
	pus, err := c.ListPUs()
	if err != nil {
		return err
	}
	from := findPU(pus, args[0])
	if from == nil {
		return &exitError{code: 2, err: fmt.Errorf("FROM %q: no PU of that name or ID", args[0])}
	}
	to, toName, err := probeTarget(pus, args[1])
	if err != nil {
		return &exitError{code: 2, err: fmt.Errorf("TO:PORT %q: %w", args[1], err)}
	}
	nsPath := from.NetNS
	if nsPath == "" && from.PID > 0 {
		nsPath = fmt.Sprintf("/proc/%d/ns/net", from.PID)
	}
	if nsPath == "" {
		return fmt.Errorf("PU %s: its network namespace is unknown", from.Name)
	}
	ns, err := netsetup.OpenNetnsPath(nsPath)
	if err != nil {
		return err
	}
	defer ns.Close()

	rep := &probeReport{From: from.Name, To: to, ToName: toName}
	start := time.Now()
	err = netsetup.InNetns(ns, func() error { return probeDial(rep, timeout) })
	if err != nil {
		return err
	}
	explainProbe(c, rep, start)
	if asJSON {
		enc := json.NewEncoder(cmd.OutOrStdout())
		enc.SetIndent("", "  ")
		if err := enc.Encode(rep); err != nil {
			return err
		}
	} else {
		printProbe(cmd.OutOrStdout(), rep)
	}
	if rep.Outcome != "ok" {
		return &exitError{code: 1}
	}
	return nil
}

func findPU(pus []node.PUInfo, s string) *node.PUInfo {
	for i := range pus {
		if pus[i].Name == s || pus[i].ID == s {
			return &pus[i]
		}
	}
	return nil
}

// probeTarget reads TO:PORT: TO is an address or a PU's name (its first
// address of the same family as none is asked: IPv4 first).
func probeTarget(pus []node.PUInfo, s string) (netip.AddrPort, string, error) {
	host, portText, err := net.SplitHostPort(s)
	if err != nil {
		return netip.AddrPort{}, "", errors.New("want ADDRESS:PORT or PU:PORT ([v6]:PORT)")
	}
	port, err := strconv.ParseUint(portText, 10, 16)
	if err != nil || port == 0 {
		return netip.AddrPort{}, "", fmt.Errorf("port %q: want 1-65535", portText)
	}
	if a, err := netip.ParseAddr(host); err == nil {
		name := ""
		for _, p := range pus {
			for _, ip := range p.IPs {
				if ip == a.Unmap() {
					name = p.Name
				}
			}
		}
		return netip.AddrPortFrom(a.Unmap(), uint16(port)), name, nil
	}
	p := findPU(pus, host)
	if p == nil || len(p.IPs) == 0 {
		return netip.AddrPort{}, "", fmt.Errorf("%q is neither an address nor a PU with an address", host)
	}
	ip := p.IPs[0]
	for _, a := range p.IPs {
		if a.Is4() {
			ip = a
			break
		}
	}
	return netip.AddrPortFrom(ip, uint16(port)), p.Name, nil
}

// probeDial connects from the current namespace, from a port of its own
// choosing (so the records of a failed attempt can be found too).
func probeDial(rep *probeReport, timeout time.Duration) error {
	var conn net.Conn
	var err error
	for range 8 {
		port := 33000 + rand.IntN(27000)
		d := net.Dialer{Timeout: timeout, LocalAddr: &net.TCPAddr{Port: port}}
		rep.Local = netip.AddrPortFrom(netip.Addr{}, uint16(port))
		t0 := time.Now()
		conn, err = d.Dial("tcp", rep.To.String())
		rep.Handshake = time.Since(t0)
		if !errors.Is(err, syscall.EADDRINUSE) {
			break
		}
	}
	switch {
	case err == nil:
		rep.Outcome = "ok"
	case errors.Is(err, syscall.ECONNREFUSED):
		rep.Outcome = "refused"
	case errors.Is(err, syscall.ECONNRESET):
		rep.Outcome = "reset"
	case isTimeout(err):
		rep.Outcome = "timeout"
	default:
		rep.Outcome, rep.Error = "error", err.Error()
	}
	if err != nil {
		rep.Handshake = 0
		return nil
	}
	defer conn.Close()
	if la, ok := conn.LocalAddr().(*net.TCPAddr); ok {
		rep.Local = la.AddrPort()
		rep.Local = netip.AddrPortFrom(rep.Local.Addr().Unmap(), rep.Local.Port())
	}
	// One exchange on the established connection (the probe server
	// answers a line; any server ACKs the byte): the kernel then has a
	// round-trip sample of packets that no longer pass the daemon.
	conn.SetDeadline(time.Now().Add(time.Second))
	if _, err := conn.Write([]byte("probe\n")); err == nil {
		buf := make([]byte, 256)
		conn.Read(buf)
	}
	if tc, ok := conn.(*net.TCPConn); ok {
		if raw, err := tc.SyscallConn(); err == nil {
			raw.Control(func(fd uintptr) {
				if info, err := unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO); err == nil {
					rep.RTT = time.Duration(info.Rtt) * time.Microsecond
				}
			})
		}
	}
	if rep.RTT > 0 && rep.Handshake > rep.RTT {
		rep.Added = rep.Handshake - rep.RTT
	}
	return nil
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout() || errors.Is(err, syscall.ETIMEDOUT) || errors.Is(err, syscall.EHOSTUNREACH)
}

// explainProbe finds the records of the probe's connection in the daemon's
// ring: the client's (egress) and, when the server is a PU of this node,
// the server's (ingress). A decision is recorded when it is made, but the
// ring is fed asynchronously of the CLI, and the server's record of a
// connection the client's side refused comes after the client's: both are
// waited for, up to 2 s.
func explainProbe(c *node.Client, rep *probeReport, start time.Time) {
	q := &node.FlowQuery{Since: start.Add(-time.Second)}
	deadline := time.Now().Add(2 * time.Second)
	for {
		rep.Client, rep.Server = nil, nil
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_ = c.Flows(ctx, q, func(got *node.Flow) error {
			if got.Server != rep.To || got.Client.Port() != rep.Local.Port() {
				return nil
			}
			f := *got
			if f.Direction == "egress" {
				rep.Client = &f
			} else {
				rep.Server = &f
			}
			return nil
		})
		cancel()
		// Both sides when the server is a PU of this node, also when the
		// client's side refused: the server saw the SYN, and its record of
		// a connection it admitted comes when the client's enforcer's RST
		// reaches it, after the client's record.
		done := rep.Client != nil && (rep.ToName == "" || rep.Server != nil)
		if done || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	rep.Verdict = node.VerdictNone
	for _, side := range []struct {
		name string
		f    *node.Flow
	}{{"server", rep.Server}, {"client", rep.Client}} {
		if side.f != nil && (side.f.Verdict == node.VerdictDenied || side.f.Verdict == node.VerdictRejected) {
			rep.Verdict, rep.DecidedBy = side.f.Verdict, side.name
			return
		}
	}
	switch {
	case rep.Outcome == "ok":
		rep.Verdict, rep.DecidedBy = node.VerdictAllowed, "both"
	case rep.Client != nil && rep.Client.Verdict == node.VerdictAllowed:
		rep.Verdict = node.VerdictAllowed // the client allowed it; nothing came back
	}
}

func printProbe(w io.Writer, rep *probeReport) {
	to := rep.To.String()
	if rep.ToName != "" {
		to += " (" + rep.ToName + ")"
	}
	fmt.Fprintf(w, "%s -> %s: %s", rep.From, to, rep.Verdict)
	if rep.DecidedBy != "" && rep.DecidedBy != "both" {
		fmt.Fprintf(w, " by the %s side", rep.DecidedBy)
	}
	fmt.Fprintf(w, " (connection: %s", rep.Outcome)
	if rep.Error != "" {
		fmt.Fprintf(w, ": %s", rep.Error)
	}
	fmt.Fprintln(w, ")")
	if rep.Outcome == "ok" {
		fmt.Fprintf(w, "  handshake   %v", rep.Handshake.Round(time.Microsecond))
		if rep.RTT > 0 {
			fmt.Fprintf(w, " (round trip in the kernel %v: the enforcement added ~%v)", rep.RTT.Round(time.Microsecond), rep.Added.Round(time.Microsecond))
		}
		fmt.Fprintln(w)
	}
	for _, side := range []struct {
		name string
		f    *node.Flow
	}{{"client", rep.Client}, {"server", rep.Server}} {
		f := side.f
		if f == nil {
			what := "no record on this node"
			if side.name == "server" && rep.ToName == "" {
				what += " (the server is not a PU of this node)"
			}
			fmt.Fprintf(w, "  %-10s  %s\n", side.name, what)
			continue
		}
		rule := "no rule"
		if f.Rule != nil {
			rule = "rule " + ruleLabel(f.Rule.Policy, f.Rule.Direction, f.Rule.Index, f.Rule.Name)
		}
		line := fmt.Sprintf("  %-10s  %s %s: %s, %s", side.name, f.LocalName, f.Direction, f.Verdict, rule)
		if f.Reason != "" && f.Reason != "none" {
			line += ", reason " + f.Reason
		}
		if f.Observed != nil {
			line += ", observed " + ruleLabel(f.Observed.Policy, f.Observed.Direction, f.Observed.Index, f.Observed.Name)
		}
		fmt.Fprintln(w, line)
		peer := "peer not verified (no identity seen from " + f.Remote.IP.String() + ")"
		if len(f.Remote.Tags) > 0 {
			peer = "peer verified as " + strings.Join(f.Remote.Tags, ",")
			if f.Remote.Node != "" {
				peer += " (node " + f.Remote.Node + ")"
			}
		}
		fmt.Fprintf(w, "  %-10s  %s\n", "", peer)
	}
}
